"""Recurrent inference cache: the fixed-size state a Mamba model carries between tokens.

Shape letters: L layers, b batch, d ``d_inner``, k ``d_conv``, n ``d_state``.

Each layer keeps the last k raw (pre-convolution) inputs of its causal convolution and the
(d, n) state of its selective scan per sequence. Neither grows with the context, which is why
a generated token costs the same after ten tokens as after ten thousand.
"""

from __future__ import annotations

import torch

from mambakit.config import MambaConfig


class InferenceCache:
    """Per-layer convolution windows and scan states for a batch of sequences.

    Attributes:
        conv_states: (L, b, d, k) in the model's dtype.
        ssm_states: (L, b, d, n) in fp32, because the scan accumulates in fp32.
        seqlen_offset: tokens already consumed by every sequence in the batch.
    """

    def __init__(
        self,
        config: MambaConfig,
        batch_size: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.config = config
        self.conv_states = torch.zeros(
            config.n_layer, batch_size, config.d_inner, config.d_conv, device=device, dtype=dtype
        )
        self.ssm_states = torch.zeros(
            config.n_layer, batch_size, config.d_inner, config.d_state, device=device, dtype=torch.float32
        )
        self.seqlen_offset = 0

    @property
    def batch_size(self) -> int:
        return self.conv_states.shape[1]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return views (window (b, d, k), state (b, d, n)) of layer ``index``, updated in place."""
        return self.conv_states[index], self.ssm_states[index]

    def reset(self) -> None:
        """Zero every state so the cache can serve a new batch of the same size."""
        self.conv_states.zero_()
        self.ssm_states.zero_()
        self.seqlen_offset = 0

    def select(self, indices: torch.Tensor | list[int]) -> None:
        """Keep only the sequences at ``indices`` (for example, drop finished ones)."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.conv_states.device)
        self.conv_states = self.conv_states.index_select(1, index)
        self.ssm_states = self.ssm_states.index_select(1, index)

    def nbytes(self) -> int:
        """Return the memory held by the cache in bytes; it does not depend on the context length."""
        return self.conv_states.nbytes + self.ssm_states.nbytes
