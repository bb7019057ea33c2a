"""Selective Copying and Induction Heads generators: layout, vocabulary, masks and seeding."""

import pytest
import torch

from mambakit.tasks.induction_heads import (
    FIRST_DATA_TOKEN as INDUCTION_FIRST_DATA,
    TRIGGER_TOKEN,
    InductionHeads,
    induction_heads_batch,
)
from mambakit.tasks.selective_copying import (
    FIRST_DATA_TOKEN as COPY_FIRST_DATA,
    MARKER_TOKEN,
    NOISE_TOKEN,
    SelectiveCopying,
    selective_copying_batch,
)


# Selective Copying


def test_copying_shapes_and_dtypes():
    batch = selective_copying_batch(5, seq_len=40, num_memorize=6, num_data_tokens=7, seed=0)
    for tensor in batch:
        assert tensor.shape == (5, 46)
    assert batch.inputs.dtype == torch.long
    assert batch.targets.dtype == torch.long
    assert batch.loss_mask.dtype == torch.bool


def test_copying_context_layout():
    seq_len, num_memorize, num_data = 50, 8, 5
    batch = selective_copying_batch(64, seq_len, num_memorize, num_data, seed=1)
    context = batch.inputs[:, :seq_len]
    is_data = context >= COPY_FIRST_DATA
    assert (is_data.sum(dim=1) == num_memorize).all()
    assert (context[~is_data] == NOISE_TOKEN).all()
    assert context.max() < COPY_FIRST_DATA + num_data
    assert (batch.inputs[:, seq_len:] == MARKER_TOKEN).all()


def test_copying_targets_are_context_data_in_order():
    seq_len, num_memorize = 30, 6
    batch = selective_copying_batch(16, seq_len, num_memorize, 9, seed=2)
    for row in range(16):
        context = batch.inputs[row, :seq_len]
        in_order = context[context >= COPY_FIRST_DATA]
        assert torch.equal(batch.targets[row, seq_len:], in_order)
    assert (batch.targets[:, :seq_len] == 0).all()


def test_copying_loss_mask_marks_answers_only():
    batch = selective_copying_batch(3, seq_len=20, num_memorize=4, seed=3)
    expected = torch.zeros(24, dtype=torch.bool)
    expected[20:] = True
    for row in batch.loss_mask:
        assert torch.equal(row, expected)


def test_copying_uses_whole_data_vocabulary():
    batch = selective_copying_batch(200, seq_len=32, num_memorize=16, num_data_tokens=16, seed=4)
    answers = batch.targets[batch.loss_mask]
    assert answers.min() == COPY_FIRST_DATA
    assert answers.max() == COPY_FIRST_DATA + 15
    assert SelectiveCopying(num_data_tokens=16).vocab_size == 18


def test_copying_positions_spread_over_context():
    # Data tokens may sit anywhere, including the first and last context positions.
    batch = selective_copying_batch(500, seq_len=24, num_memorize=3, seed=5)
    used = (batch.inputs[:, :24] != NOISE_TOKEN).any(dim=0)
    assert used.all()


def test_copying_full_context_has_no_noise():
    batch = selective_copying_batch(4, seq_len=6, num_memorize=6, seed=6)
    assert (batch.inputs[:, :6] >= COPY_FIRST_DATA).all()


def test_copying_same_seed_same_batch():
    first = selective_copying_batch(4, 32, 5, seed=7)
    second = selective_copying_batch(4, 32, 5, seed=7)
    other = selective_copying_batch(4, 32, 5, seed=8)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first.inputs, other.inputs)


def test_copying_generator_advances():
    generator = torch.Generator().manual_seed(9)
    first = selective_copying_batch(4, 32, 5, seed=generator)
    second = selective_copying_batch(4, 32, 5, seed=generator)
    assert not torch.equal(first.inputs, second.inputs)


def test_copying_invalid_arguments():
    with pytest.raises(ValueError, match="num_memorize 10 is larger than seq_len 8"):
        selective_copying_batch(2, seq_len=8, num_memorize=10)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        selective_copying_batch(0)
    with pytest.raises(ValueError, match="num_data_tokens must be a positive integer"):
        selective_copying_batch(2, num_data_tokens=-1)


def test_copying_task_object_matches_function():
    task = SelectiveCopying(seq_len=40, num_memorize=5, num_data_tokens=6)
    assert task.with_length(80).seq_len == 80
    assert task.chance_accuracy == pytest.approx(1 / 6)
    direct = selective_copying_batch(3, 40, 5, 6, seed=10)
    for a, b in zip(task.sample(3, seed=10), direct):
        assert torch.equal(a, b)


# Induction Heads


def test_induction_shapes_and_dtypes():
    batch = induction_heads_batch(6, seq_len=50, num_data_tokens=8, seed=0)
    for tensor in batch:
        assert tensor.shape == (6, 50)
    assert batch.inputs.dtype == torch.long
    assert batch.loss_mask.dtype == torch.bool


def test_induction_trigger_appears_twice():
    batch = induction_heads_batch(128, seq_len=40, seed=1)
    is_trigger = batch.inputs == TRIGGER_TOKEN
    assert (is_trigger.sum(dim=1) == 2).all()
    assert is_trigger[:, -1].all()
    # The first trigger leaves room for its answer before the final trigger.
    assert not is_trigger[:, -2].any()


def test_induction_target_follows_first_trigger():
    batch = induction_heads_batch(64, seq_len=30, seed=2)
    for row in range(64):
        first = int((batch.inputs[row] == TRIGGER_TOKEN).nonzero()[0])
        assert batch.targets[row, -1] == batch.inputs[row, first + 1]
    assert (batch.targets[:, :-1] == 0).all()


def test_induction_vocabulary_range():
    batch = induction_heads_batch(100, seq_len=64, num_data_tokens=16, seed=3)
    data = batch.inputs[batch.inputs != TRIGGER_TOKEN]
    assert data.min() == INDUCTION_FIRST_DATA
    assert data.max() == INDUCTION_FIRST_DATA + 15
    answers = batch.targets[batch.loss_mask]
    assert answers.min() >= INDUCTION_FIRST_DATA
    assert answers.max() <= INDUCTION_FIRST_DATA + 15
    assert InductionHeads(num_data_tokens=16).vocab_size == 17


def test_induction_loss_mask_last_position_only():
    batch = induction_heads_batch(5, seq_len=12, seed=4)
    expected = torch.zeros(12, dtype=torch.bool)
    expected[-1] = True
    for row in batch.loss_mask:
        assert torch.equal(row, expected)


def test_induction_trigger_positions_cover_range():
    seq_len = 10
    batch = induction_heads_batch(2000, seq_len=seq_len, seed=5)
    first = (batch.inputs[:, :-1] == TRIGGER_TOKEN).float().argmax(dim=1)
    assert set(first.tolist()) == set(range(seq_len - 2))


def test_induction_shortest_sequence():
    batch = induction_heads_batch(8, seq_len=3, seed=6)
    assert (batch.inputs[:, 0] == TRIGGER_TOKEN).all()
    assert (batch.inputs[:, 2] == TRIGGER_TOKEN).all()
    assert torch.equal(batch.targets[:, 2], batch.inputs[:, 1])


def test_induction_same_seed_same_batch():
    first = induction_heads_batch(4, 64, seed=7)
    second = induction_heads_batch(4, 64, seed=7)
    other = induction_heads_batch(4, 64, seed=8)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert not torch.equal(first.inputs, other.inputs)


def test_induction_invalid_arguments():
    with pytest.raises(ValueError, match="seq_len must be at least 3"):
        induction_heads_batch(2, seq_len=2)
    with pytest.raises(ValueError, match="num_data_tokens must be a positive integer, got 0"):
        induction_heads_batch(2, num_data_tokens=0)


def test_induction_task_object_matches_function():
    task = InductionHeads(seq_len=20, num_data_tokens=5)
    assert task.with_length(4096).seq_len == 4096
    assert task.chance_accuracy == pytest.approx(0.2)
    direct = induction_heads_batch(3, 20, 5, seed=11)
    for a, b in zip(task.sample(3, seed=11), direct):
        assert torch.equal(a, b)
