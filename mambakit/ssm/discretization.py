"""Discretization: from the ODE x' = A x + B u to the recurrence x_k = A_bar x_{k-1} + B_bar u_k.

Glossary of shape letters and symbols:

    N       state size
    M       input size
    P       output size
    H       channels (independent SSMs side by side, Mamba's ``d_inner``)
    L       number of discrete steps
    ...     any leading batch dimensions, for example one per step size
    A, B    continuous state and input matrices
    C, D    output and feedthrough matrices, unchanged by every method here
    Δ       step size ``delta``: the time the input is held per step
    A_bar   discrete state matrix
    B_bar   discrete input matrix

Methods, written for dense A (for a diagonal A every product is elementwise and every
inverse a division):

    zoh             A_bar = exp(ΔA)
                    B_bar = (ΔA)^-1 (exp(ΔA) - I) ΔB
    zoh_simplified  A_bar = exp(ΔA)
                    B_bar = ΔB
    bilinear        A_bar = (I - ΔA/2)^-1 (I + ΔA/2)
                    B_bar = (I - ΔA/2)^-1 ΔB
    euler           A_bar = I + ΔA                    (forward Euler)
                    B_bar = ΔB
    backward_euler  A_bar = (I - ΔA)^-1
                    B_bar = (I - ΔA)^-1 ΔB

Zero-order hold (ZOH) assumes u is constant over each step. It is then exact: for an input
equal to u_k on [kΔ, (k+1)Δ), the discrete state x_k equals the continuous state at (k+1)Δ.

Mamba writes ZOH in the form above (Gu and Dao, 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces"), but its scan kernel applies ``zoh_simplified``:
B_bar = (ΔA)^-1 (exp(ΔA) - I) ΔB = ΔB + Δ²AB/2 + O(Δ³), so the simplification changes B_bar
by a relative amount of about Δ‖AB‖ / (2‖B‖), first order in Δ. ``zoh_simplification_error``
measures that difference and its effect on the step response.

Bilinear is the trapezoid rule (Tustin's method). It is second-order accurate and maps the
stable half-plane onto the unit disk. Forward Euler is first order and unstable once
|1 + Δλ| > 1 for some eigenvalue λ of A. All methods keep C and D, as S4 and Mamba do.

Step convention: with x_{-1} = 0 and x_k = A_bar x_{k-1} + B_bar u_k, y_k = C x_k + D u_k, the
discrete output y_k approximates the continuous output at time (k+1)Δ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mambakit.ssm.continuous import ContinuousSSM

METHODS = ("zoh", "zoh_simplified", "bilinear", "euler", "backward_euler")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown discretization method {method!r}; use one of {METHODS}")


def _as_delta(delta, reference: torch.Tensor) -> torch.Tensor:
    """Convert the step size to a real tensor on the device of ``reference``; reject Δ <= 0."""
    real_dtype = reference.real.dtype if reference.is_complex() else reference.dtype
    delta = torch.as_tensor(delta, dtype=real_dtype, device=reference.device)
    if bool((delta <= 0).any()):
        raise ValueError(
            f"step size delta must be positive, got min {delta.min().item():.3g}; "
            "pass Δ > 0 (Mamba gets it from a softplus)"
        )
    return delta


def discretize_dense(
    A: torch.Tensor, B: torch.Tensor, delta, method: str = "zoh"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretize a system with a dense state matrix.

    Args:
        A: state matrix, (N, N).
        B: input matrix, (N, M).
        delta: step size, a positive scalar or a tensor of shape (...,) to discretize for
            several step sizes at once.
        method: one of ``METHODS``.

    Returns:
        (A_bar, B_bar) with shapes (..., N, N) and (..., N, M), without leading dimensions
        for a scalar ``delta``.

    ``"zoh"`` solves (ΔA) X = (exp(ΔA) - I) ΔB, so A must be invertible. The difference
    exp(ΔA) - I cancels for small ‖ΔA‖ and loses about log10(1 / ‖ΔA‖) digits. For a singular
    or very small ΔA use ``mambakit.ssm.continuous.integrate_matrix_exponential(A, B, delta)``,
    which returns the same B_bar without an inverse or a cancelling difference.
    """
    _check_method(method)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be square (N, N), got shape {tuple(A.shape)}")
    if B.ndim != 2 or B.shape[0] != A.shape[0]:
        raise ValueError(f"B must have shape (N, M) with N = {A.shape[0]}, got {tuple(B.shape)}")

    step = _as_delta(delta, A)[..., None, None]
    identity = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    delta_A = step * A
    delta_B = step * B

    if method in ("zoh", "zoh_simplified"):
        A_bar = torch.linalg.matrix_exp(delta_A)
        if method == "zoh_simplified":
            return A_bar, delta_B
        # ΔA commutes with exp(ΔA), so (ΔA)^-1 (exp(ΔA) - I) ΔB is a single solve.
        return A_bar, torch.linalg.solve(delta_A, (A_bar - identity) @ delta_B)

    if method == "euler":
        return identity + delta_A, delta_B

    # Bilinear and backward Euler are generalized bilinear transforms (alpha = 1/2 and 1):
    # A_bar = (I - alpha ΔA)^-1 (I + (1 - alpha) ΔA), B_bar = (I - alpha ΔA)^-1 ΔB.
    alpha = 0.5 if method == "bilinear" else 1.0
    left = identity - alpha * delta_A
    A_bar = torch.linalg.solve(left, identity + (1.0 - alpha) * delta_A)
    B_bar = torch.linalg.solve(left, delta_B.expand(*left.shape[:-1], B.shape[1]))
    return A_bar, B_bar


def _expm1_over_z(z: torch.Tensor) -> torch.Tensor:
    """Evaluate (exp(z) - 1) / z elementwise, with its limit 1 at z = 0.

    expm1 keeps full relative precision for small |z|, where exp(z) - 1 would cancel.
    """
    is_zero = z == 0
    safe_z = torch.where(is_zero, torch.ones_like(z), z)
    return torch.where(is_zero, torch.ones_like(z), torch.expm1(safe_z) / safe_z)


def discretize_diagonal(
    A: torch.Tensor, B: torch.Tensor, delta, method: str = "zoh"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretize a system with a diagonal state matrix, elementwise.

    Args:
        A: the diagonal of the state matrix, real or complex, for example (H, N) or (N,).
        B: input vector(s), broadcastable against A, for example (H, N) or (batch, L, 1, N).
        delta: positive step size, a scalar or a tensor broadcastable against A. For Mamba's
            layout (A of shape (H, N), Δ of shape (batch, L, H)) pass ``delta[..., None]``.
        method: one of ``METHODS``.

    Returns:
        (A_bar, B_bar), both of the broadcast shape of ``delta * A`` and ``delta * B``.

    ZOH uses B_bar = (exp(ΔA) - 1) / (ΔA) · ΔB, which equals ΔB where A = 0.
    """
    _check_method(method)
    step = _as_delta(delta, A)
    delta_A = step * A
    delta_B = step * B

    if method == "zoh":
        return torch.exp(delta_A), _expm1_over_z(delta_A) * delta_B
    if method == "zoh_simplified":
        return torch.exp(delta_A), delta_B
    if method == "euler":
        return 1 + delta_A, delta_B
    alpha = 0.5 if method == "bilinear" else 1.0
    left = 1 - alpha * delta_A
    return (1 + (1.0 - alpha) * delta_A) / left, delta_B / left


def discrete_response(
    A_bar: torch.Tensor,
    B_bar: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    u: torch.Tensor,
) -> torch.Tensor:
    """Run x_k = A_bar x_{k-1} + B_bar u_k, y_k = C x_k + D u_k from x_{-1} = 0.

    Args:
        A_bar: (N, N). B_bar: (N, M). C: (P, N). D: (P, M).
        u: inputs, (L, M).

    Returns:
        outputs, (L, P).
    """
    state = torch.zeros(A_bar.shape[0], dtype=A_bar.dtype, device=A_bar.device)
    outputs = []
    for u_k in u:
        state = A_bar @ state + B_bar @ u_k
        outputs.append(C @ state + D @ u_k)
    return torch.stack(outputs)


def step_response_error(system: ContinuousSSM, delta: float, method: str, duration: float) -> float:
    """Measure how far a discretization's step response is from the exact one.

    Runs the discretized system on a unit step on every input for ceil(duration / Δ) steps
    and compares y_k with the exact response s((k+1)Δ) from ``ContinuousSSM.step_response``.

    Returns:
        max_k |y_k - s((k+1)Δ)| / max_t |s(t)|, over all outputs and inputs.
    """
    if duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")
    num_steps = math.ceil(duration / delta - 1e-9)
    A_bar, B_bar = discretize_dense(system.A, system.B, delta, method)

    # One state column per input runs the step responses of all inputs at once.
    states = torch.zeros_like(B_bar)
    outputs = []
    for _ in range(num_steps):
        states = A_bar @ states + B_bar
        outputs.append(system.C @ states + system.D)
    discrete = torch.stack(outputs)

    times = delta * torch.arange(1, num_steps + 1, dtype=system.A.dtype)
    exact = system.step_response(times)
    return ((discrete - exact).abs().max() / exact.abs().max()).item()


@dataclass(frozen=True)
class ZOHSimplificationError:
    """Errors of Mamba's simplified ZOH (B_bar = ΔB) against exact ZOH, one entry per Δ.

    Attributes:
        deltas: the step sizes, (S,).
        b_bar_relative_error: ‖ΔB - B_bar_zoh‖ / ‖B_bar_zoh‖ in the Frobenius norm, (S,).
        step_error_zoh: ``step_response_error`` of exact ZOH, rounding error only, (S,).
        step_error_simplified: ``step_response_error`` of the simplified form, (S,).
    """

    deltas: torch.Tensor
    b_bar_relative_error: torch.Tensor
    step_error_zoh: torch.Tensor
    step_error_simplified: torch.Tensor


def zoh_simplification_error(
    system: ContinuousSSM, deltas, duration: float = 5.0
) -> ZOHSimplificationError:
    """Measure what replacing ZOH's B_bar by ΔB costs, for each step size in ``deltas``.

    Both errors shrink in proportion to Δ (first order), and ``estimate_order`` fits that
    exponent.
    """
    deltas = torch.as_tensor(deltas, dtype=system.A.dtype)
    _, B_bar_exact = discretize_dense(system.A, system.B, deltas, "zoh")
    _, B_bar_simplified = discretize_dense(system.A, system.B, deltas, "zoh_simplified")
    b_bar_error = torch.linalg.matrix_norm(
        B_bar_simplified - B_bar_exact
    ) / torch.linalg.matrix_norm(B_bar_exact)
    step_zoh = [step_response_error(system, d, "zoh", duration) for d in deltas.tolist()]
    step_simplified = [
        step_response_error(system, d, "zoh_simplified", duration) for d in deltas.tolist()
    ]
    return ZOHSimplificationError(
        deltas=deltas,
        b_bar_relative_error=b_bar_error,
        step_error_zoh=torch.tensor(step_zoh, dtype=deltas.dtype),
        step_error_simplified=torch.tensor(step_simplified, dtype=deltas.dtype),
    )


def estimate_order(deltas, errors) -> float:
    """Fit p in error ≈ c Δ^p by least squares on log(error) against log(Δ)."""
    log_delta = torch.log(torch.as_tensor(deltas, dtype=torch.float64))
    log_error = torch.log(torch.as_tensor(errors, dtype=torch.float64))
    centered = log_delta - log_delta.mean()
    return (centered @ (log_error - log_error.mean()) / (centered @ centered)).item()
