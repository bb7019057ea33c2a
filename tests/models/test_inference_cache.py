"""Cached (recurrent) decoding against the full forward pass."""

import pytest
import torch

from model_factory import make_model
from mambakit.generation.generate import generate_ids


@pytest.mark.parametrize("length", [2, 3, 4, 5, 17])
@pytest.mark.parametrize("d_conv", [2, 4])
def test_step_by_step_equals_full_forward(length, d_conv):
    model = make_model(d_conv=d_conv)
    input_ids = torch.randint(0, 64, (3, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        full = model(input_ids)
        cache = model.allocate_cache(3)
        stepped = torch.stack([model.step(input_ids[:, t], cache) for t in range(length)], dim=1)
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)
    assert cache.seqlen_offset == length


@pytest.mark.parametrize("pieces", [[1, 19], [4, 4, 12], [3, 1, 1, 15], [20]])
def test_chunked_prefill_equals_one_prefill(pieces):
    model = make_model()
    input_ids = torch.randint(0, 64, (2, sum(pieces)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(input_ids)
        cache = model.allocate_cache(2)
        outputs, start = [], 0
        for size in pieces:
            outputs.append(model(input_ids[:, start:start + size], cache=cache))
            start += size
        # The cache must also carry on correctly into single-token steps afterwards.
        next_ids = torch.tensor([5, 7])
        stepped = model.step(next_ids, cache)
        reference = model(torch.cat([input_ids, next_ids[:, None]], dim=1))[:, -1]
    torch.testing.assert_close(torch.cat(outputs, dim=1), full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stepped, reference, atol=1e-5, rtol=1e-5)


def test_cache_size_does_not_grow(tiny_model):
    cache = tiny_model.allocate_cache(1)
    size_before = cache.nbytes()
    with torch.no_grad():
        tiny_model(torch.randint(0, 64, (1, 50)), cache=cache)
        for _ in range(10):
            tiny_model.step(torch.tensor([1]), cache)
    assert cache.nbytes() == size_before
    assert cache.seqlen_offset == 60


def test_left_padded_batch_equals_single_prompts():
    model = make_model()
    prompts = [[5, 9, 2, 33, 8, 1, 7], [12], [40, 41, 42], [3, 3, 3, 3, 3, 3, 3, 3, 3, 3]]
    batched = generate_ids(model, prompts, max_new_tokens=10, temperature=0)
    for prompt, tokens in zip(prompts, batched):
        assert tokens == generate_ids(model, prompt, max_new_tokens=10, temperature=0)


def test_left_padded_logits_equal_single_prompt():
    model = make_model()
    prompt = torch.tensor([[9, 8, 7, 6, 5]])
    padded = torch.tensor([[0, 0, 0, 9, 8, 7, 6, 5]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(prompt)
        batch = model(padded, attention_mask=mask)
    torch.testing.assert_close(batch[:, 3:], alone, atol=1e-5, rtol=1e-5)


def test_sampled_batch_equals_single_prompts():
    model = make_model()
    prompts = [[5, 9, 2, 33], [12, 13]]
    batched = generate_ids(model, prompts, max_new_tokens=12, temperature=0.8, top_k=20, seed=7)
    for prompt, tokens in zip(prompts, batched):
        assert tokens == generate_ids(model, prompt, max_new_tokens=12, temperature=0.8, top_k=20, seed=7)


def test_cache_batch_mismatch_raises(tiny_model):
    cache = tiny_model.allocate_cache(2)
    with pytest.raises(ValueError, match="cache contains 2 sequences"):
        tiny_model(torch.zeros(3, 4, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_ungated_step_by_step_equals_full_forward(backend):
    model = make_model(gated=False)
    model.scan_backend = backend
    assert model.backbone.layers[0].mixer.in_proj.out_features == model.config.d_inner
    input_ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(input_ids)
        cache = model.allocate_cache(2)
        prefill = model(input_ids[:, :5], cache=cache)
        stepped = torch.stack([model.step(input_ids[:, t], cache) for t in range(5, 9)], dim=1)
    torch.testing.assert_close(torch.cat([prefill, stepped], dim=1), full, atol=1e-5, rtol=1e-5)
