"""Selective Copying: output, in order, the few data tokens scattered among noise tokens.

Shape letters: b batch, L ``seq_len`` (the context), k ``num_memorize``, T = L + k.

The task comes from the Mamba paper (Gu and Dao, 2023, arXiv:2312.00752). The classic Copying
task puts the tokens to copy at fixed positions, so a time-invariant convolution with a fixed
delay solves it. Here the positions are random: the model has to decide from each token's
content whether to keep it, which an LTI SSM cannot do (see docs/concepts/selection.md).

Vocabulary (V = ``num_data_tokens``, ``vocab_size`` = V + 2):

    0            NOISE_TOKEN, fills the context between the data tokens
    1            MARKER_TOKEN, fills the answer region
    2 .. V + 1   data tokens, drawn uniformly and independently (repeats allowed)

Layout of one sequence of T = L + k positions:

    0 .. L-1     context: k data tokens at k distinct random positions, NOISE_TOKEN elsewhere
    L .. T-1     k MARKER_TOKENs

The model reads the markers and must output the i-th data token of the context (counted by
position) at answer position L + i. ``targets`` holds those tokens there and 0 elsewhere, and
``loss_mask`` is True at the k answer positions only. The answer is not fed back as input, so
each answer position has to find its token from the context and the count of markers so far.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from mambakit.tasks.base import TaskBatch, check_positive, make_generator

NOISE_TOKEN = 0
MARKER_TOKEN = 1
FIRST_DATA_TOKEN = 2


def selective_copying_batch(
    batch_size: int,
    seq_len: int = 256,
    num_memorize: int = 16,
    num_data_tokens: int = 16,
    seed: int | torch.Generator | None = None,
) -> TaskBatch:
    """Draw a batch of Selective Copying sequences.

    Args:
        batch_size: sequences b.
        seq_len: context length L, at least ``num_memorize``.
        num_memorize: data tokens k per sequence, which are also the answers.
        num_data_tokens: distinct data tokens V.
        seed: an int or a ``torch.Generator`` for repeatable batches, or None for random ones.

    Returns:
        ``TaskBatch`` of (b, L + k) tensors: ``inputs`` and ``targets`` int64 with ids below
        V + 2, ``loss_mask`` bool and True exactly at positions L .. L + k - 1.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("seq_len", seq_len),
        ("num_memorize", num_memorize),
        ("num_data_tokens", num_data_tokens),
    ):
        check_positive(name, value)
    if num_memorize > seq_len:
        raise ValueError(
            f"num_memorize {num_memorize} is larger than seq_len {seq_len}; the context needs one "
            "position per data token, so raise seq_len or lower num_memorize"
        )
    generator = make_generator(seed)
    total_length = seq_len + num_memorize

    # The first k entries of a random permutation are k distinct positions, and sorting them
    # puts the data tokens in the order the answers must follow.
    positions = torch.rand(batch_size, seq_len, generator=generator).argsort(dim=1)[:, :num_memorize]
    positions = positions.sort(dim=1).values  # (b, k)
    data = torch.randint(
        FIRST_DATA_TOKEN,
        FIRST_DATA_TOKEN + num_data_tokens,
        (batch_size, num_memorize),
        generator=generator,
    )  # (b, k)

    inputs = torch.full((batch_size, total_length), NOISE_TOKEN, dtype=torch.long)
    inputs.scatter_(1, positions, data)
    inputs[:, seq_len:] = MARKER_TOKEN

    targets = torch.zeros(batch_size, total_length, dtype=torch.long)
    targets[:, seq_len:] = data
    loss_mask = torch.zeros(batch_size, total_length, dtype=torch.bool)
    loss_mask[:, seq_len:] = True
    return TaskBatch(inputs, targets, loss_mask)


@dataclass(frozen=True)
class SelectiveCopying:
    """Settings of the Selective Copying task, in the interface ``runner.train_task`` uses.

    The Mamba paper uses a context of 4096 with 16 data tokens to memorize and a vocabulary
    of 16. The default context here is 256, so a CPU trains a model in minutes.
    """

    seq_len: int = 256
    num_memorize: int = 16
    num_data_tokens: int = 16

    name = "selective-copying"

    @property
    def vocab_size(self) -> int:
        """Token ids the task uses: noise, marker and the data tokens."""
        return FIRST_DATA_TOKEN + self.num_data_tokens

    @property
    def chance_accuracy(self) -> float:
        """Accuracy of a uniform guess among the data tokens."""
        return 1.0 / self.num_data_tokens

    def with_length(self, seq_len: int) -> "SelectiveCopying":
        """Return the same task with context length ``seq_len``."""
        return replace(self, seq_len=seq_len)

    def sample(self, batch_size: int, seed: int | torch.Generator | None = None) -> TaskBatch:
        """Draw a batch; see ``selective_copying_batch``."""
        return selective_copying_batch(
            batch_size, self.seq_len, self.num_memorize, self.num_data_tokens, seed=seed
        )
