"""Induction Heads: recall the token that followed the first occurrence of a trigger token.

Shape letters: b batch, L ``seq_len``.

The task comes from the Mamba paper (Gu and Dao, 2023, arXiv:2312.00752), which trains at
length 256 and tests much longer sequences to see whether the learned recall extrapolates.
Associative recall of this kind is what induction heads do in Transformers.

Vocabulary (V = ``num_data_tokens``, ``vocab_size`` = V + 1):

    0            TRIGGER_TOKEN, appears exactly twice per sequence
    1 .. V       data tokens, drawn uniformly and independently

Layout of one sequence of L positions:

    p            TRIGGER_TOKEN, with p drawn uniformly from 0 .. L-3
    p + 1        the answer, an ordinary data token
    L - 1        TRIGGER_TOKEN again
    elsewhere    data tokens

At the last position the model must output the token at p + 1. ``targets`` holds it at L - 1
and 0 elsewhere, and ``loss_mask`` is True at L - 1 only. The gap between the answer and the
question is anything from 1 to L - 2 steps, so a model that extrapolates has to keep the answer
over gaps up to the full evaluation length.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mambakit.tasks.base import TaskBatch, check_positive, make_generator

TRIGGER_TOKEN = 0
FIRST_DATA_TOKEN = 1

# Shortest valid sequence: trigger, answer, trigger.
MIN_SEQ_LEN = 3


def induction_heads_batch(
    batch_size: int,
    seq_len: int = 256,
    num_data_tokens: int = 16,
    seed: int | torch.Generator | None = None,
) -> TaskBatch:
    """Draw a batch of Induction Heads sequences.

    Args:
        batch_size: sequences b.
        seq_len: length L, at least 3.
        num_data_tokens: distinct data tokens V.
        seed: an int or a ``torch.Generator`` for repeatable batches, or None for random ones.

    Returns:
        ``TaskBatch`` of (b, L) tensors: ``inputs`` and ``targets`` int64 with ids below V + 1,
        ``loss_mask`` bool and True exactly at position L - 1.
    """
    check_positive("batch_size", batch_size)
    check_positive("num_data_tokens", num_data_tokens)
    check_positive("seq_len", seq_len)
    if seq_len < MIN_SEQ_LEN:
        raise ValueError(
            f"seq_len must be at least {MIN_SEQ_LEN} (trigger, answer, trigger), got {seq_len}"
        )
    generator = make_generator(seed)

    inputs = torch.randint(
        FIRST_DATA_TOKEN,
        FIRST_DATA_TOKEN + num_data_tokens,
        (batch_size, seq_len),
        generator=generator,
    )
    trigger_positions = torch.randint(0, seq_len - 2, (batch_size, 1), generator=generator)
    inputs.scatter_(1, trigger_positions, TRIGGER_TOKEN)
    inputs[:, -1] = TRIGGER_TOKEN

    targets = torch.zeros(batch_size, seq_len, dtype=torch.long)
    targets[:, -1] = inputs.gather(1, trigger_positions + 1)[:, 0]
    loss_mask = torch.zeros(batch_size, seq_len, dtype=torch.bool)
    loss_mask[:, -1] = True
    return TaskBatch(inputs, targets, loss_mask)


@dataclass(frozen=True)
class InductionHeads:
    """Settings of the Induction Heads task, in the interface ``runner.train_task`` uses.

    The Mamba paper uses a vocabulary of 16 and training length 256, as the defaults here.
    """

    seq_len: int = 256
    num_data_tokens: int = 16

    name = "induction-heads"

    @property
    def vocab_size(self) -> int:
        """Token ids the task uses: the trigger and the data tokens."""
        return FIRST_DATA_TOKEN + self.num_data_tokens

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess among the data tokens."""
        return 1.0 / self.num_data_tokens

    def with_length(self, seq_len: int) -> "InductionHeads":
        """Return the same task with sequence length ``seq_len``."""
        return replace(self, seq_len=seq_len)

    def sample(self, batch_size: int, seed: int | torch.Generator | None = None) -> TaskBatch:
        """Draw a batch; see ``induction_heads_batch``."""
        return induction_heads_batch(batch_size, self.seq_len, self.num_data_tokens, seed=seed)
