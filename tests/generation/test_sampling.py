"""Sampling settings, logit filters and generation argument checks."""

import pytest
import torch

from model_factory import make_model
from mambakit.generation.generate import generate_ids
from mambakit.generation.sampling import SamplingConfig, apply_repetition_penalty, filter_logits, select_next_tokens


@pytest.mark.parametrize(
    "settings, name",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(repetition_penalty=-1.0), "repetition_penalty"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=1.0), "min_p"),
    ],
)
def test_invalid_settings_name_the_value(settings, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**settings)


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, SamplingConfig(top_k=2)))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_set_reaching_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), SamplingConfig(top_p=0.75)))
    assert kept.tolist() == [[True, True, False, False]]
    kept_all_top = torch.isfinite(filter_logits(probs.log(), SamplingConfig(top_p=0.1)))
    assert kept_all_top.tolist() == [[True, False, False, False]]


def test_min_p_drops_tokens_below_fraction_of_top():
    probs = torch.tensor([[0.6, 0.3, 0.06, 0.04]])
    kept = torch.isfinite(filter_logits(probs.log(), SamplingConfig(min_p=0.1)))
    assert kept.tolist() == [[True, True, False, False]]


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -2.0, 2.0, -2.0]])
    seen = torch.tensor([[True, True, False, False]])
    penalised = apply_repetition_penalty(logits, seen, 2.0)
    assert penalised.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_padding_rows_are_never_sampled():
    logits = torch.zeros(64, 10)
    logits[:, 8:] = 100.0  # the padding rows look most likely
    generators = [torch.Generator().manual_seed(i) for i in range(64)]
    tokens = select_next_tokens(logits, SamplingConfig(temperature=1.0), None, 8, generators)
    assert int(tokens.max()) < 8
    assert int(select_next_tokens(logits, SamplingConfig(temperature=0.0), None, 8).max()) < 8


def test_sampling_follows_distribution():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().expand(4000, -1)
    generator = torch.Generator().manual_seed(0)
    tokens = select_next_tokens(logits, SamplingConfig(), None, 3, [generator] * 4000)
    counts = torch.bincount(tokens, minlength=3).float() / 4000
    torch.testing.assert_close(counts, probs, atol=0.03, rtol=0)


def test_seed_makes_generation_repeatable():
    model = make_model()
    first = generate_ids(model, [1, 2, 3], max_new_tokens=15, temperature=1.0, seed=11)
    second = generate_ids(model, [1, 2, 3], max_new_tokens=15, temperature=1.0, seed=11)
    assert first == second


def test_eos_stops_generation():
    model = make_model()
    greedy = generate_ids(model, [1, 2, 3], max_new_tokens=6, temperature=0)
    stopped = generate_ids(model, [1, 2, 3], max_new_tokens=6, temperature=0, eos_token_id=greedy[2])
    assert stopped == greedy[: greedy.index(greedy[2]) + 1]


@pytest.mark.parametrize(
    "prompts, message",
    [([[]], "prompt 0 is empty"), ([[1, 64]], "token id 64"), ([[-1]], "token id -1"), ([], "no prompts")],
)
def test_bad_prompt_ids(prompts, message):
    with pytest.raises(ValueError, match=message):
        generate_ids(make_model(), prompts, max_new_tokens=3)


def test_bad_max_new_tokens():
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_ids(make_model(), [1], max_new_tokens=-2)
