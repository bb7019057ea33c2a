"""The GPT-NeoX-style Transformer baseline: KV-cache decoding, rotary embedding, size matching."""

import pytest
import torch

from mambakit import Mamba, MambaConfig
from mambakit.baselines.transformer import (
    Attention,
    RotaryEmbedding,
    TransformerConfig,
    TransformerLM,
    apply_rotary,
    count_parameters,
    matching_transformer_config,
)

VOCAB = 50


def make_transformer(seed: int = 0, **overrides) -> TransformerLM:
    settings = dict(d_model=32, n_layer=2, vocab_size=VOCAB, n_head=4, rotary_fraction=0.5)
    settings.update(overrides)
    torch.manual_seed(seed)
    return TransformerLM(TransformerConfig(**settings)).eval()


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# KV cache


@pytest.mark.parametrize("parallel_residual", [True, False])
@pytest.mark.parametrize("prompt_length", [1, 5])
def test_prefill_then_steps_equals_full_forward(parallel_residual, prompt_length):
    model = make_transformer(parallel_residual=parallel_residual)
    input_ids = random_ids(2, 12)
    with torch.no_grad():
        full = model(input_ids)
        cache = model.allocate_cache(2, max_length=12)
        prefilled = model(input_ids[:, :prompt_length], cache=cache)
        stepped = [model.step(input_ids[:, t], cache) for t in range(prompt_length, 12)]
    decoded = torch.cat([prefilled, torch.stack(stepped, dim=1)], dim=1)
    torch.testing.assert_close(decoded, full, atol=1e-5, rtol=1e-5)
    assert cache.length == 12


@pytest.mark.parametrize("pieces", [[1, 15], [4, 4, 8], [3, 1, 1, 11], [7, 9]])
def test_chunked_prefill_equals_full_forward(pieces):
    model = make_transformer()
    input_ids = random_ids(3, sum(pieces), seed=1)
    with torch.no_grad():
        full = model(input_ids)
        cache = model.allocate_cache(3, max_length=sum(pieces) + 1)
        outputs, start = [], 0
        for size in pieces:
            outputs.append(model(input_ids[:, start:start + size], cache=cache))
            start += size

        # The cache must carry on into a single-token step after the chunks.
        next_ids = torch.tensor([5, 7, 9])
        stepped = model.step(next_ids, cache)
        reference = model(torch.cat([input_ids, next_ids[:, None]], dim=1))[:, -1]
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stepped, reference, atol=1e-5, rtol=1e-5)


def test_last_only_returns_last_position():
    model = make_transformer()
    input_ids = random_ids(2, 6)
    with torch.no_grad():
        full = model(input_ids)
        last = model(input_ids, last_only=True)
    assert last.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last[:, 0], full[:, -1])


def test_cache_bytes_used_and_allocated():
    model = make_transformer()
    cache = model.allocate_cache(2, max_length=10)
    # 2 tensors (keys, values) x 2 layers x batch 2 x 4 heads x 10 positions x head size 8 x 4 bytes.
    allocated = 2 * 2 * 2 * 4 * 10 * 8 * 4
    assert cache.allocated_nbytes() == allocated
    assert cache.nbytes() == 0
    with torch.no_grad():
        model(random_ids(2, 3), cache=cache)
    assert cache.nbytes() == allocated * 3 // 10
    with torch.no_grad():
        model.step(torch.tensor([1, 2]), cache)
    assert cache.nbytes() == allocated * 4 // 10
    assert cache.allocated_nbytes() == allocated


def test_cache_overflow_names_max_length():
    model = make_transformer()
    cache = model.allocate_cache(1, max_length=4)
    with torch.no_grad():
        model(random_ids(1, 3), cache=cache)
        with pytest.raises(ValueError, match="max_length >= 5"):
            model(random_ids(1, 2), cache=cache)
    assert cache.length == 3


def test_cache_batch_mismatch_rejected():
    model = make_transformer()
    cache = model.allocate_cache(2, max_length=4)
    with pytest.raises(ValueError, match="cache contains 2 sequences"):
        model(random_ids(3, 2), cache=cache)


def test_tied_head_shares_embedding():
    tied = make_transformer(tie_embeddings=True)
    untied = make_transformer(tie_embeddings=False)
    assert tied.lm_head.weight is tied.backbone.embed_in.weight
    assert untied.lm_head.weight is not untied.backbone.embed_in.weight
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 32


# Rotary embedding


def test_rotary_scores_depend_only_on_position_difference():
    rotary = RotaryEmbedding(rotary_dim=8, base=10000.0)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 1, 1, 12, generator=generator)  # head size 12, 8 rotated dimensions
    key = torch.randn(1, 1, 1, 12, generator=generator)

    def score(query_position: int, key_position: int) -> torch.Tensor:
        cos_q, sin_q = rotary(torch.tensor([query_position]))
        cos_k, sin_k = rotary(torch.tensor([key_position]))
        return (apply_rotary(query, cos_q, sin_q) * apply_rotary(key, cos_k, sin_k)).sum()

    reference = score(3, 1)
    for query_position, key_position in [(10, 8), (102, 100), (5000, 4998)]:
        torch.testing.assert_close(score(query_position, key_position), reference, atol=1e-4, rtol=1e-4)
    # A different distance gives a different score, so the check above is not vacuous.
    assert not torch.allclose(score(3, 2), reference, atol=1e-3)


def test_rotary_keeps_vector_norm():
    rotary = RotaryEmbedding(rotary_dim=8, base=10000.0)
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rotary(torch.arange(40, 45))
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_attention_invariant_to_shifting_all_positions():
    config = TransformerConfig(d_model=32, n_layer=1, vocab_size=VOCAB, n_head=4, rotary_fraction=1.0)
    torch.manual_seed(0)
    attention = Attention(config)
    rotary = RotaryEmbedding(config.rotary_dim, config.rotary_base)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        at_zero = attention(x, *rotary(torch.arange(0, 7)))
        shifted = attention(x, *rotary(torch.arange(300, 307)))
    torch.testing.assert_close(shifted, at_zero, atol=1e-5, rtol=1e-4)


# Config and parameter matching


def test_config_rejects_odd_rotary_dimensions():
    with pytest.raises(ValueError, match="even number"):
        TransformerConfig(d_model=32, n_head=4, rotary_fraction=0.375)  # 3 of 8 dimensions


def test_config_default_heads_need_multiple_of_64():
    assert TransformerConfig(d_model=768).n_head == 12
    with pytest.raises(ValueError, match="pass n_head"):
        TransformerConfig(d_model=100)


@pytest.mark.parametrize(
    "mamba_settings",
    [
        dict(d_model=768, n_layer=24, vocab_size=50280),
        dict(d_model=256, n_layer=4, vocab_size=8192),
        dict(d_model=128, n_layer=7, vocab_size=1000),
    ],
)
def test_matching_picks_closest_layer_count(mamba_settings):
    mamba_config = MambaConfig(**mamba_settings)
    match = matching_transformer_config(mamba_config)
    config = match.config
    with torch.device("meta"):
        mamba_parameters = Mamba(mamba_config).num_parameters()

    assert match.mamba_parameters == mamba_parameters
    assert match.transformer_parameters == count_parameters(config)
    assert config.d_model == mamba_config.d_model
    assert config.vocab_size == mamba_config.vocab_size
    gap = abs(match.transformer_parameters - mamba_parameters)
    for neighbor in (config.n_layer - 1, config.n_layer + 1):
        if neighbor < 1:
            continue
        other = TransformerConfig(**{**vars(config), "n_layer": neighbor})
        assert gap <= abs(count_parameters(other) - mamba_parameters), f"{neighbor} layers are closer"


def test_matching_130m_shape_gives_13_layers():
    match = matching_transformer_config(MambaConfig(d_model=768, n_layer=24, vocab_size=50280))
    assert match.config.n_layer == 13
    assert abs(match.relative_difference) < 0.02


def test_matching_rejects_n_layer_override():
    with pytest.raises(ValueError, match="n_layer"):
        matching_transformer_config(MambaConfig(d_model=64, n_layer=2, vocab_size=100), n_layer=3)


# transformers' GPTNeoXForCausalLM


@pytest.mark.parametrize("parallel_residual", [True, False])
@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_matches_transformers_gpt_neox(parallel_residual, tie_embeddings):
    pytest.importorskip("transformers")
    from mambakit.baselines.transformer import TransformersGPTNeoX

    ours = make_transformer(parallel_residual=parallel_residual, tie_embeddings=tie_embeddings)
    theirs = TransformersGPTNeoX(ours.config).eval()

    # Our module names are transformers' with backbone. in place of gpt_neox.
    state = {
        ("gpt_neox." + name[len("backbone."):] if name.startswith("backbone.") else name): tensor
        for name, tensor in ours.state_dict().items()
    }
    missing, unexpected = theirs.model.load_state_dict(state, strict=False)
    assert missing == []
    assert unexpected == []

    input_ids = random_ids(2, 9)
    with torch.no_grad():
        expected = theirs(input_ids)
        actual = ours(input_ids)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert ours.num_parameters() == theirs.num_parameters()


def test_transformers_baseline_cache_decoding():
    pytest.importorskip("transformers")
    from mambakit.baselines.transformer import TransformersGPTNeoX

    torch.manual_seed(0)
    model = TransformersGPTNeoX(TransformerConfig(d_model=32, n_layer=2, vocab_size=VOCAB, n_head=4)).eval()
    input_ids = random_ids(2, 8)
    with torch.no_grad():
        full = model(input_ids)
        cache = model.allocate_cache(2, max_length=8)
        prefilled = model(input_ids[:, :5], cache=cache)
        stepped = [model.step(input_ids[:, t], cache) for t in range(5, 8)]
    torch.testing.assert_close(torch.cat([prefilled, torch.stack(stepped, dim=1)], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 8
    # keys and values: 2 x 2 layers x batch 2 x 4 heads x 8 positions x head size 8 x 4 bytes.
    assert cache.nbytes() == 2 * 2 * 2 * 4 * 8 * 8 * 4
