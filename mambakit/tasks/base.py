"""Batch type, random generators and argument checks shared by the synthetic tasks.

Shape letters: b batch, T total sequence length of a task's inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TaskBatch(NamedTuple):
    """One batch of a synthetic task.

    Fields:
        inputs: (b, T) token ids fed to the model.
        targets: (b, T) token ids the model must output at each position. Only positions where
            ``loss_mask`` is True carry an answer, the others hold 0.
        loss_mask: (b, T) bool, True at the answer positions that the loss and the accuracy use.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """Return a CPU ``torch.Generator``: the one given, one seeded with ``seed``, or a random one."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def check_positive(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
