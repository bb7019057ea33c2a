"""The language model with mixer="s4d": forward, backward, masks and the missing cache."""

import pytest
import torch

from mambakit.config import MambaConfig
from mambakit.models.mamba_lm import Mamba
from mambakit.ssm.lti import S4DMixer


def _model(mixer="s4d", seed=0, **overrides) -> Mamba:
    torch.manual_seed(seed)
    settings = dict(d_model=32, n_layer=2, vocab_size=40, d_state=8, mixer=mixer)
    settings.update(overrides)
    return Mamba(MambaConfig(**settings))


def test_s4d_model_uses_s4d_mixer():
    model = _model()
    for layer in model.backbone.layers:
        assert isinstance(layer.mixer, S4DMixer)
        assert layer.mixer.ssm.output_linear is None


def test_s4d_forward_shape():
    model = _model()
    logits = model(torch.randint(0, 40, (3, 25)))
    assert logits.shape == (3, 25, 40)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("gated", [True, False])
def test_s4d_backward_reaches_every_parameter(gated):
    model = _model(gated=gated)
    assert model.backbone.layers[0].mixer.in_proj.out_features == (2 if gated else 1) * 64
    logits = model(torch.randint(0, 40, (2, 30)))
    logits.square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_s4d_training_step_lowers_loss():
    model = _model()
    ids = torch.randint(0, 40, (4, 20))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_s4d_gradient_checkpointing_matches():
    model = _model()
    ids = torch.randint(0, 40, (2, 16))
    plain = model(ids)
    model.gradient_checkpointing = True
    checkpointed = model(ids)
    checkpointed.sum().backward()
    torch.testing.assert_close(checkpointed, plain)


@pytest.mark.parametrize("gated", [True, False])
def test_s4d_is_causal(gated):
    model = _model(gated=gated)
    ids = torch.randint(0, 40, (1, 30))
    changed = ids.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 40
    torch.testing.assert_close(model(changed)[:, :20], model(ids)[:, :20])


def test_s4d_left_padding_masked():
    model = _model()
    ids = torch.randint(1, 40, (1, 12))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 12)], dim=1)
    torch.testing.assert_close(model(padded, attention_mask=mask)[:, 5:], model(ids), atol=1e-5, rtol=1e-5)


def test_s4d_ignores_scan_backend():
    model = _model()
    ids = torch.randint(0, 40, (2, 10))
    torch.testing.assert_close(model(ids, backend="reference"), model(ids, backend="cpu"))


def test_s4d_cache_raises_clear_error():
    model = _model()
    mixer = model.backbone.layers[0].mixer
    hidden = torch.randn(2, 5, 32)
    with pytest.raises(NotImplementedError, match="without cache=") as error:
        mixer(hidden, cache=(torch.zeros(1), torch.zeros(1)))
    assert "mixer='mamba'" in str(error.value)
    with pytest.raises(NotImplementedError, match="keeps no inference cache"):
        mixer.step(hidden[:, 0], cache=None)
    with pytest.raises(NotImplementedError, match="not 's4d'"):
        model.allocate_cache(2)


def test_s4d_parameters_match_mamba_mixer():
    # The gate and projections give both mixers nearly the same size at equal width.
    for d_model, d_state in [(32, 8), (64, 16), (128, 16)]:
        s4d = _model("s4d", d_model=d_model, d_state=d_state).backbone.layers[0].mixer
        mamba = _model("mamba", d_model=d_model, d_state=d_state).backbone.layers[0].mixer
        s4d_count = sum(p.numel() for p in s4d.parameters())
        mamba_count = sum(p.numel() for p in mamba.parameters())
        assert abs(s4d_count - mamba_count) / mamba_count < 0.1, (d_model, s4d_count, mamba_count)
        if (d_model, d_state) == (64, 16):
            # The counts that the S4DMixer docstring and docs/concepts/selection.md quote.
            assert s4d_count == 31616
            assert mamba_count == 32640


def test_s4d_odd_state_rejected():
    with pytest.raises(ValueError, match="d_state must be even"):
        _model(d_state=5)


def test_s4d_mixer_rejects_wrong_width():
    mixer = S4DMixer(8, 16, d_state=4)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(batch, length, d_model=8\)"):
        mixer(torch.randn(2, 5, 9))
