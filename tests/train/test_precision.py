"""bf16 autocast, activation checkpointing and gradient accumulation give the gradients they should."""

import pytest
import torch
import torch.nn.functional as F

from mambakit import Mamba, MambaConfig
from mambakit.modules import mixer as mixer_module
from mambakit.train.precision import autocast
from mambakit.train.trainer import TrainConfig, train

CPU = torch.device("cpu")


def tiny_model(seed=0, **overrides):
    settings = dict(d_model=32, n_layer=2, vocab_size=64, d_state=4)
    settings.update(overrides)
    torch.manual_seed(seed)
    return Mamba(MambaConfig(**settings)).train()


def lm_loss(model, tokens):
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_bf16_training_keeps_fp32_state(text_corpus, tokenizer_dir, tmp_path, monkeypatch):
    seen = []
    original = mixer_module.selective_scan

    def recording_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, **kwargs):
        seen.append((u.dtype, A.dtype, D.dtype, delta_bias.dtype))
        return original(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, **kwargs)

    monkeypatch.setattr(mixer_module, "selective_scan", recording_scan)
    config = TrainConfig(data=[str(text_corpus)], out=str(tmp_path / "run"), tokenizer=str(tokenizer_dir),
                         d_model=32, n_layer=2, d_state=4, steps=3, batch_size=2, seq_len=32, warmup_steps=1,
                         eval_batches=1, log_every=1, dtype="bf16")
    summary = train(config, progress=False)

    assert all(torch.isfinite(torch.tensor(loss)) for loss in summary["train_losses"])
    assert {entry[0] for entry in seen} == {torch.bfloat16}  # the projections ran under autocast
    assert {entry[1:] for entry in seen} == {(torch.float32, torch.float32, torch.float32)}
    saved = Mamba.from_pretrained(summary["model_dir"])
    assert {p.dtype for p in saved.parameters()} == {torch.float32}


def test_bf16_losses_track_fp32():
    tokens = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(0))
    curves = {}
    for dtype in ("fp32", "bf16"):
        model = tiny_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        curve = []
        for _ in range(6):
            with autocast(dtype, CPU):
                loss = lm_loss(model, tokens)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            curve.append(loss.item())
        curves[dtype] = curve
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(p.grad is None for p in model.parameters())

    assert curves["fp32"][-1] < curves["fp32"][0]
    for fp32, bf16 in zip(curves["fp32"], curves["bf16"]):
        assert abs(fp32 - bf16) < 0.02, (curves["fp32"], curves["bf16"])


@pytest.mark.parametrize(
    "backend, dtype, length", [("cpu", "fp32", 80), ("cpu", "bf16", 80), ("reference", "fp32", 24)]
)
def test_checkpointed_gradients_equal_plain(backend, dtype, length):
    # 80 steps cover more than one of the CPU kernel's 64-step chunks.
    tokens = torch.randint(0, 64, (2, length + 1), generator=torch.Generator().manual_seed(1))
    results = []
    for checkpointing in (False, True):
        model = tiny_model()
        model.scan_backend = backend
        model.gradient_checkpointing = checkpointing
        with autocast(dtype, CPU):
            loss = lm_loss(model, tokens)
        loss.backward()
        results.append((loss.item(), gradients(model)))

    (plain_loss, plain), (checkpointed_loss, checkpointed) = results
    assert checkpointed_loss == plain_loss
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=0, atol=0, msg=name)


def test_accumulated_gradients_equal_full_batch():
    tokens = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(2))
    full = tiny_model()
    lm_loss(full, tokens).backward()

    accumulated = tiny_model()
    for half in tokens.split(2):
        (lm_loss(accumulated, half) / 2).backward()

    for name, grad in gradients(full).items():
        torch.testing.assert_close(gradients(accumulated)[name], grad, rtol=1e-5, atol=1e-6, msg=name)
