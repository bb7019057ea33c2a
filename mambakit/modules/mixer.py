"""The Mamba-1 mixer: gated, input-selective state space layer.

Shape letters: b batch, l length, m ``d_model``, d ``d_inner`` (= expand * m), n ``d_state``,
r ``dt_rank``, k ``d_conv``.

Data flow (names follow the published checkpoints, so loading is one-to-one):

    in_proj: (b, l, m) -> x, z (b, l, d) each; x alone when ``config.gated`` is False
    conv1d:  causal depthwise convolution of x, then SiLU
    x_proj:  x -> dt (b, l, r), B (b, l, n), C (b, l, n)     the selection mechanism
    dt_proj: dt -> (b, l, d); softplus(dt + dt_proj.bias) is the step size Delta
    scan:    y = selective_scan(x, Delta, A = -exp(A_log), B, C, D), gated by silu(z) if gated
    out_proj: (b, l, d) -> (b, l, m)
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambakit.config import MambaConfig
from mambakit.ops.causal_conv import causal_conv1d_channels_last, causal_conv1d_step, update_window
from mambakit.ops.selective_scan import selective_scan, selective_state_update

# Parameters that stay in fp32 when the rest of the model is cast to half precision: A_log and
# D enter exp() and the state directly, and the dt bias sets the time scale of every channel.
FP32_PARAMETERS = ("A_log", "D", "dt_proj.bias")


def split_gate(projected: torch.Tensor, gated: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split an ``in_proj`` output into x and the gate input z, (..., d) each.

    An ungated mixer's projection is x alone, and z is None.
    """
    if not gated:
        return projected, None
    x, z = projected.chunk(2, dim=-1)
    return x, z


class MambaMixer(nn.Module):
    """Selective SSM mixer of one residual block."""

    def __init__(self, config: MambaConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        d_inner, d_state, dt_rank = config.d_inner, config.d_state, config.dt_rank

        self.gated = config.gated
        self.in_proj = nn.Linear(config.d_model, (2 if config.gated else 1) * d_inner, bias=config.bias)
        self.conv1d = nn.Conv1d(
            d_inner, d_inner, kernel_size=config.d_conv, groups=d_inner, padding=config.d_conv - 1, bias=config.conv_bias
        )
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state))
        self.D = nn.Parameter(torch.empty(d_inner))
        self.out_proj = nn.Linear(d_inner, config.d_model, bias=config.bias)

        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Initialise A, D and the step-size projection as in the Mamba paper."""
        config = self.config

        # S4D-Real: A = -(1, 2, ..., n) for every channel, stored as its log so A stays negative.
        arange = torch.arange(1, config.d_state + 1, dtype=torch.float32)
        self.A_log.copy_(torch.log(arange).expand(config.d_inner, -1))
        self.D.fill_(1.0)

        # Keep dt_proj's output variance at dt_scale regardless of the rank.
        std = config.dt_rank**-0.5 * config.dt_scale
        if config.dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)

        # Step sizes log-uniform in [dt_min, dt_max]; the bias is their inverse softplus, so that
        # softplus(bias) reproduces them at initialisation.
        log_min, log_max = math.log(config.dt_min), math.log(config.dt_max)
        dt = torch.exp(torch.rand(config.d_inner) * (log_max - log_min) + log_min)
        dt = dt.clamp(min=config.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_reinit = True

    def _split_projection(self, x: torch.Tensor):
        """Project x to (dt before bias, B, C): shapes (..., d), (..., n), (..., n)."""
        config = self.config
        projected = self.x_proj(x)
        dt, B, C = torch.split(projected, [config.dt_rank, config.d_state, config.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is added inside the scan, in fp32
        return dt, B, C

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """Mix a sequence, optionally continuing from and updating a cache.

        Args:
            hidden_states: (b, l, m).
            cache: (window (b, d, k), state (b, d, n)) of this layer, updated in place, or None.
            attention_mask: (b, l) with 0 at left-padding positions, or None. Masked positions
                feed zeros into the convolution and the scan, so they leave the state untouched.
            backend: backend of the selective scan and the convolution, see
                ``mambakit.ops.selective_scan``.

        Returns:
            (b, l, m).
        """
        x, z = split_gate(self.in_proj(hidden_states), self.gated)  # (b, l, d) each
        mask = None if attention_mask is None else attention_mask[:, :, None].to(x.dtype)
        if mask is not None:
            x = x * mask

        window, state = cache if cache is not None else (None, None)
        # On CPU the fused kernels read x as a view into the in_proj output and write a contiguous
        # (b, l, d) output for the scan, so no transposes or copies surround the convolution.
        conv_weight = self.conv1d.weight[:, 0, :]
        x_conv = causal_conv1d_channels_last(x, conv_weight, self.conv1d.bias, window=window, backend=backend)
        if window is not None:
            update_window(window, x.transpose(1, 2))
        x = x_conv  # (b, l, d)
        if mask is not None:
            x = x * mask

        dt, B, C = self._split_projection(x)
        A = -torch.exp(self.A_log.float())
        result = selective_scan(
            x,
            dt,
            A,
            B,
            C,
            D=self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
            initial_state=state,
            return_final_state=state is not None,
            backend=backend,
        )
        if state is not None:
            y, final_state = result
            state.copy_(final_state)
        else:
            y = result
        return self.out_proj(y)

    def step(
        self, hidden_states: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor], backend: str = "auto"
    ) -> torch.Tensor:
        """Mix one token per sequence, updating the cache in place.

        Args:
            hidden_states: (b, m).
            cache: (window (b, d, k), state (b, d, n)) of this layer.
            backend: backend of the state update, see ``mambakit.ops.selective_scan``.

        Returns:
            (b, m).
        """
        window, state = cache
        x, z = split_gate(self.in_proj(hidden_states), self.gated)  # (b, d) each
        x = causal_conv1d_step(x, window, self.conv1d.weight[:, 0, :], self.conv1d.bias, backend=backend)
        dt, B, C = self._split_projection(x)
        A = self._decode_state_matrix()
        y = selective_state_update(
            state, x, dt, A, B, C, D=self.D, z=z, dt_bias=self.dt_proj.bias, dt_softplus=True, backend=backend
        )
        return self.out_proj(y)

    def _decode_state_matrix(self) -> torch.Tensor:
        """Return A = -exp(A_log) (d, n) in fp32, computed once per change of A_log.

        A decode step is a handful of small ops per layer, and recomputing this exp for every
        token showed up at 45% of a 130m-sized step on a loaded 2-core machine. The cache key is
        the parameter's version counter, which every in-place update (an optimizer step,
        ``load_state_dict``) increments.

        NOTE: writes through ``A_log.data`` bypass the version counter; call
        ``reset_decode_cache()`` after them.
        """
        key = (self.A_log._version, self.A_log.data_ptr(), self.A_log.device, self.A_log.dtype)
        cached = getattr(self, "_decode_A", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, -torch.exp(self.A_log.float()))
            self._decode_A = cached
        return cached[1]

    def reset_decode_cache(self) -> None:
        """Forget the cached A of ``step``; needed only after writing to ``A_log.data`` directly."""
        self._decode_A = None
