"""Parity with transformers' MambaForCausalLM on identical random weights."""

import pytest
import torch

from model_factory import make_model
from mambakit.generation.generate import generate_ids

transformers = pytest.importorskip("transformers")


def to_transformers(model):
    """Build transformers' MambaForCausalLM with the same weights as ``model``."""
    config = model.config
    hf_config = transformers.MambaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layer,
        state_size=config.d_state,
        conv_kernel=config.d_conv,
        expand=config.expand,
        time_step_rank=config.dt_rank,
        use_bias=config.bias,
        use_conv_bias=config.conv_bias,
        layer_norm_epsilon=config.norm_epsilon,
        residual_in_fp32=config.residual_in_fp32,
    )
    hf_model = transformers.MambaForCausalLM(hf_config).eval()
    state = model.state_dict()
    state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
    hf_model.load_state_dict(state, strict=True)
    return hf_model


CONFIGS = [
    dict(d_model=32, n_layer=2, vocab_size=64, d_state=4),
    dict(d_model=48, n_layer=3, vocab_size=96, d_state=16, d_conv=3, expand=3, bias=True, conv_bias=False),
]


@pytest.mark.parametrize("settings", CONFIGS)
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_logits_match_transformers(settings, backend):
    model = make_model(**settings)
    hf_model = to_transformers(model)
    input_ids = torch.randint(0, settings["vocab_size"], (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(input_ids, backend=backend)
        theirs = hf_model(input_ids).logits
    assert ours.shape == (2, 23, settings["vocab_size"])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("settings", CONFIGS)
def test_greedy_tokens_match_transformers(settings):
    model = make_model(**settings)
    hf_model = to_transformers(model)
    prompt = [3, 9, 27, 5, 11]
    ours = generate_ids(model, prompt, max_new_tokens=12, temperature=0)
    with torch.no_grad():
        theirs = hf_model.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None
        )[0, len(prompt):].tolist()
    assert ours == theirs
