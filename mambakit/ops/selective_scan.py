"""Selective scan: the recurrence at the heart of a Mamba mixer, with one dispatch over backends.

Shape letters used in this module:

    b   batch
    l   sequence length
    d   channels of the scan (the mixer's ``d_inner``)
    n   state size per channel (``d_state``, N in the Mamba paper)

For each channel the scan runs the discretized, input-dependent state space model

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t        (h_t has n entries)
    y_t = <C_t, h_t> + D * u_t

and optionally gates the output with ``y_t * silu(z_t)``. ``A`` is diagonal and real (the
S4D-Real form Mamba uses), ``exp(dt A)`` is the zero-order-hold discretization of ``A`` and
``dt * B`` the simplified (Euler) discretization of ``B`` that Mamba's kernels apply.

Every backend takes the same arguments and returns the same values; ``selective_scan`` picks
one with ``backend=`` and records which one ran (``last_backend()``).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "cpu")

_last_backend: str | None = None
_logged_backends: set[str] = set()


def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Run the selective scan one time step at a time, in fp32, with plain PyTorch ops.

    Args:
        u: input, (b, l, d).
        delta: step size before bias and softplus, (b, l, d).
        A: state matrix diagonal, (d, n); negative real for a stable scan.
        B: input matrix per step, (b, l, n).
        C: output matrix per step, (b, l, n).
        D: skip connection, (d,), or None.
        z: gate, (b, l, d), or None; the output is multiplied by ``silu(z)``.
        delta_bias: added to ``delta`` before the softplus, (d,), or None.
        delta_softplus: apply ``softplus`` to ``delta + delta_bias``.
        initial_state: state before the first step, (b, d, n), or None for zeros.
        return_final_state: also return the state after the last step.

    Returns:
        y with the dtype of ``u``, (b, l, d); and if ``return_final_state``, the final state
        (b, d, n) in fp32.

    Only the running state (b, d, n) lives at a time; the (b, l, d, n) tensor of all states is
    never built, though autograd keeps what each step needs for the backward pass.
    """
    input_dtype = u.dtype
    u = u.float()
    delta = delta.float()
    A = A.float()
    B = B.float()
    C = C.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()
    if delta_softplus:
        delta = F.softplus(delta)

    batch, length, d_inner = u.shape
    d_state = A.shape[1]
    if initial_state is None:
        state = u.new_zeros(batch, d_inner, d_state)
    else:
        state = initial_state.float()

    outputs = []
    for t in range(length):
        dt = delta[:, t, :, None]  # (b, d, 1)
        decay = torch.exp(dt * A)  # (b, d, n)
        drive = dt * B[:, t, None, :] * u[:, t, :, None]  # (b, d, n)
        state = decay * state + drive
        outputs.append(torch.einsum("bdn,bn->bd", state, C[:, t]))
    y = torch.stack(outputs, dim=1) if outputs else u.new_zeros(batch, 0, d_inner)

    if D is not None:
        y = y + u * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(input_dtype)
    if return_final_state:
        return y, state
    return y


def selective_state_update_reference(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """Advance the scan by one token, updating ``state`` in place.

    Args:
        state: (b, d, n) fp32, overwritten with the new state.
        x, dt, z: (b, d).  B, C: (b, n).  A: (d, n).  D, dt_bias: (d,).

    Returns:
        y, (b, d), with the dtype of ``x``.
    """
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    xf = x.float()

    decay = torch.exp(dt[:, :, None] * A.float())
    drive = dt[:, :, None] * B.float()[:, None, :] * xf[:, :, None]
    state.mul_(decay).add_(drive)
    y = torch.einsum("bdn,bn->bd", state, C.float())

    if D is not None:
        y = y + xf * D.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(x.dtype)


def _cpu_scan() -> Callable | None:
    """Return the numba scan, or None (with one warning) when it cannot be used."""
    try:
        from mambakit.ops import selective_scan_cpu
    except ImportError as error:  # numba missing or too old for this Python
        _warn_once("cpu-import", "CPU scan kernels are unavailable (%s); using the reference scan.", error)
        return None
    if not selective_scan_cpu.available():
        _warn_once(
            "cpu-compile",
            "CPU scan kernels failed to compile (%s); using the reference scan.",
            selective_scan_cpu.unavailable_reason(),
        )
        return None
    return selective_scan_cpu.selective_scan_cpu


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return the backend that ``backend`` means for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"invalid scan backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu" and _cpu_scan() is not None:
            return "cpu"
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"scan backend 'cpu' needs CPU tensors, got tensors on {device}; use backend='auto'")
        if _cpu_scan() is None:
            return "reference"
    return backend


def _record(backend: str) -> None:
    global _last_backend
    _last_backend = backend
    if backend not in _logged_backends:
        _logged_backends.add(backend)
        logger.info("selective scan backend: %s", backend)


def last_backend() -> str | None:
    """Return the name of the backend that ran the most recent scan, or None before any scan."""
    return _last_backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
):
    """Run the selective scan with the chosen backend.

    ``backend`` is ``"auto"`` (the CPU kernels for CPU tensors when numba works, the reference
    otherwise), ``"reference"`` or ``"cpu"``. Arguments, shapes and returns are those of
    ``selective_scan_reference``.
    """
    _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state)
    chosen = resolve_backend(backend, u.device)
    _record(chosen)
    kwargs = dict(
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        initial_state=initial_state,
        return_final_state=return_final_state,
    )
    if chosen == "cpu":
        return _cpu_scan()(u, delta, A, B, C, **kwargs)
    return selective_scan_reference(u, delta, A, B, C, **kwargs)


def _check_shapes(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, length, d_inner), got shape {tuple(u.shape)}")
    batch, length, d_inner = u.shape
    if A.dim() != 2 or A.shape[0] != d_inner:
        raise ValueError(f"A must be (d_inner={d_inner}, d_state), got shape {tuple(A.shape)}")
    d_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, length, d_inner)),
        "B": (B, (batch, length, d_state)),
        "C": (C, (batch, length, d_state)),
        "z": (z, (batch, length, d_inner)),
        "D": (D, (d_inner,)),
        "delta_bias": (delta_bias, (d_inner,)),
        "initial_state": (initial_state, (batch, d_inner, d_state)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match u and A, got {tuple(tensor.shape)}")
