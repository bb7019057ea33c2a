"""Random data streams: one generator per micro-batch of a step, shared out among the processes.

A step of the global batch consists of ``processes * grad_accum`` micro-batches, and micro-batch
``g`` is always drawn from stream ``g``. Process ``rank`` draws micro-batches
``rank * grad_accum ... rank * grad_accum + grad_accum - 1``, so every process draws different
windows, and the data of a step depends only on the seed and the number of streams. Hence two
processes with ``grad_accum`` 1 draw the same global batch as one process with ``grad_accum`` 2,
and a checkpoint resumes exactly under any split of the same number of streams.

Stream 0 is ``torch.Generator().manual_seed(seed)``, the generator a single-process run with
``grad_accum`` 1 has always used; stream ``g > 0`` is seeded from ``(seed, g)`` by numpy's
``SeedSequence``.
"""

from __future__ import annotations

import numpy as np
import torch


def stream_seed(seed: int, stream: int) -> int:
    """Return the torch seed of stream ``stream`` of a run seeded with ``seed``."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])


class DataStreams:
    """The generators of one process's micro-batches, ``grad_accum`` of them.

    Args:
        seed: run seed.
        rank: index of this process.
        grad_accum: micro-batches per step and process.
    """

    def __init__(self, seed: int, rank: int, grad_accum: int) -> None:
        self.first = rank * grad_accum
        self.generators = [
            torch.Generator().manual_seed(stream_seed(seed, self.first + j)) for j in range(grad_accum)
        ]

    def __getitem__(self, micro_batch: int) -> torch.Generator:
        return self.generators[micro_batch]

    def states(self) -> dict[int, torch.Tensor]:
        """Return ``{stream index: generator state}`` for this process's streams."""
        return {self.first + j: generator.get_state() for j, generator in enumerate(self.generators)}

    def load(self, states: list[torch.Tensor]) -> None:
        """Restore this process's streams from the states of all streams, in stream order.

        A stream without a state in ``states`` keeps its seeded start.
        """
        for j, generator in enumerate(self.generators):
            if self.first + j < len(states):
                generator.set_state(states[self.first + j])
