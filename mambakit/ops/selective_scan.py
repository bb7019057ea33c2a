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

Every backend takes the same arguments and returns the same values, except that ``mamba_ssm``
takes no initial state. ``selective_scan`` picks one with ``backend=`` and records which one ran
(``last_backend()``).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "cpu", "triton", "mamba_ssm")

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

    Only the running state (b, d, n) exists at a time, and the (b, l, d, n) tensor of all states
    is never built. Autograd still keeps what each step needs for the backward pass.
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


def _triton_unavailable_reason(device: torch.device) -> str | None:
    """Return why the Triton kernels cannot run on ``device``, or None when they can."""
    from mambakit.ops import selective_scan_triton

    return selective_scan_triton.unavailable_reason(device)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return the backend that ``backend`` means for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"invalid scan backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cpu" and _cpu_scan() is not None:
            return "cpu"
        if device.type == "cuda":
            reason = _triton_unavailable_reason(device)
            if reason is None:
                return "triton"
            _warn_once("triton", "Triton scan kernels are unavailable (%s); using the reference scan.", reason)
        return "reference"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"scan backend 'cpu' needs CPU tensors, got tensors on {device}; use backend='auto'")
        if _cpu_scan() is None:
            return "reference"
    if backend == "triton":
        reason = _triton_unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"scan backend 'triton' cannot run on {device}: {reason}")
    if backend == "mamba_ssm":
        if device.type != "cuda":
            raise ValueError(f"scan backend 'mamba_ssm' needs CUDA tensors, got tensors on {device}; use backend='auto'")
        try:
            import mamba_ssm  # noqa: F401
        except ImportError as error:
            raise ValueError(
                f"scan backend 'mamba_ssm' needs the mamba_ssm package ({error}); install it or use backend='triton'"
            ) from error
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

    ``backend`` is ``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"mamba_ssm"``.
    ``"auto"`` picks the numba kernels for CPU tensors when numba works, the Triton kernels for
    CUDA tensors when triton is installed, and the reference otherwise. ``"triton"`` runs on CPU
    tensors only under triton's interpreter, which ``TRITON_INTERPRET=1`` turns on if it is set
    before triton is first imported. ``"mamba_ssm"`` calls
    ``selective_scan_fn`` of the mamba_ssm package on CUDA tensors and takes no
    ``initial_state``. Arguments, shapes and returns are those of ``selective_scan_reference``.
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
    if chosen == "triton":
        from mambakit.ops.selective_scan_triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, **kwargs)
    if chosen == "mamba_ssm":
        return _mamba_ssm_scan(u, delta, A, B, C, **kwargs)
    return selective_scan_reference(u, delta, A, B, C, **kwargs)


def selective_state_update(
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
    backend: str = "auto",
) -> torch.Tensor:
    """Advance the scan by one token with the chosen backend, updating ``state`` in place.

    Arguments and returns are those of ``selective_state_update_reference``. The CPU and Triton
    backends fuse the whole update into one kernel, so a decode step makes one pass over the
    state instead of one per elementwise op. ``"mamba_ssm"`` falls back to the reference here.
    """
    _check_update_shapes(state, x, dt, A, B, C, D, z, dt_bias)
    chosen = resolve_backend(backend, state.device)
    args = (state, x, dt, A, B, C)
    kwargs = dict(D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus)
    if chosen == "cpu":
        from mambakit.ops.selective_scan_cpu import selective_state_update_cpu

        return selective_state_update_cpu(*args, **kwargs)
    if chosen == "triton":
        from mambakit.ops.selective_scan_triton import selective_state_update_triton

        return selective_state_update_triton(*args, **kwargs)
    return selective_state_update_reference(*args, **kwargs)


def _mamba_ssm_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_final_state):
    """Run ``mamba_ssm``'s ``selective_scan_fn``, which takes channels-first (b, d, l) tensors.

    The (b, l, d) inputs go in as transposed views and y comes back as one. mamba_ssm documents
    delta_bias as fp32, and A and D are cast to fp32 too, the dtype the mixer keeps them in.
    It has no initial state.
    """
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    if initial_state is not None:
        raise ValueError("scan backend 'mamba_ssm' does not take an initial_state; use backend='triton'")

    def channels_first(tensor):
        return None if tensor is None else tensor.transpose(1, 2)

    result = selective_scan_fn(
        channels_first(u), channels_first(delta), A.float(), channels_first(B), channels_first(C),
        D=None if D is None else D.float(), z=channels_first(z),
        delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus, return_last_state=return_final_state,
    )  # fmt: skip
    if return_final_state:
        y, final_state = result
        return y.transpose(1, 2), final_state.float()
    return result.transpose(1, 2)


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


def _check_update_shapes(state, x, dt, A, B, C, D, z, dt_bias) -> None:
    """Raise ValueError unless the one-token update's arguments match ``state`` (b, d, n)."""
    if state.dim() != 3:
        raise ValueError(f"state must be (batch, d_inner, d_state), got shape {tuple(state.shape)}")
    batch, d_inner, d_state = state.shape
    expected = {
        "x": (x, (batch, d_inner)),
        "dt": (dt, (batch, d_inner)),
        "A": (A, (d_inner, d_state)),
        "B": (B, (batch, d_state)),
        "C": (C, (batch, d_state)),
        "D": (D, (d_inner,)),
        "z": (z, (batch, d_inner)),
        "dt_bias": (dt_bias, (d_inner,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match state, got {tuple(tensor.shape)}")
