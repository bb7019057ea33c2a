"""Residual block and RMSNorm of the Mamba language model.

Shape letters: b batch, l length, m ``d_model``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mambakit.config import MambaConfig
from mambakit.modules.mixer import MambaMixer


class RMSNorm(nn.Module):
    """Root-mean-square normalisation with a learned scale, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise x of shape (..., dim) over its last axis; returns the weight's dtype."""
        # Round to the weight's dtype first, as the published implementations do, so half
        # precision models normalise the same values they did in training.
        xf = x.to(self.weight.dtype).float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(self.weight.dtype)


class MambaBlock(nn.Module):
    """Pre-norm residual block: ``residual + mixer(norm(residual))``.

    With ``residual_in_fp32`` the residual stream is carried in fp32 even when the weights are
    half precision, as the published models were trained.
    """

    def __init__(self, config: MambaConfig, layer_idx: int, mixer: nn.Module | None = None) -> None:
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.d_model, eps=config.norm_epsilon)
        self.mixer = mixer if mixer is not None else MambaMixer(config, layer_idx)

    def _residual(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.float() if self.residual_in_fp32 else hidden_states

    def forward(self, hidden_states, cache=None, attention_mask=None, backend="auto") -> torch.Tensor:
        """Apply the block to (b, l, m) and return (b, l, m)."""
        mixed = self.mixer(
            self.norm(hidden_states), cache=cache, attention_mask=attention_mask, backend=backend
        )
        return self._residual(hidden_states) + mixed

    def step(self, hidden_states: torch.Tensor, cache, backend: str = "auto") -> torch.Tensor:
        """Apply the block to one token per sequence, (b, m) -> (b, m), updating ``cache``."""
        return self._residual(hidden_states) + self.mixer.step(self.norm(hidden_states), cache, backend=backend)
