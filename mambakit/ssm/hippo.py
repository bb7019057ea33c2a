"""HiPPO matrices, the diagonal S4D initialisations and online function approximation.

Glossary of shape letters and symbols:

    N       state size: the number of polynomial coefficients kept, or of diagonal modes
    L       number of input samples fed through a recurrence
    Q       number of points at which a reconstruction is evaluated
    A, B    state and input matrices, returned in the SSM sign convention x' = A x + B u, so a
            stable A has eigenvalues with negative real part
    Δ       step size
    t       current time
    θ       window length of LegT
    P_n     Legendre polynomial of degree n on [-1, 1]
    L_n     Laguerre polynomial of degree n on [0, ∞)
    c       the state, read as coefficients of the input history in a polynomial basis

HiPPO (Gu, Dao, Ermon, Rudra and Ré, 2020, "HiPPO: Recurrent Memory with Optimal Polynomial
Projections") defines the state c(t) as the coefficients of the best polynomial approximation
of the input history u(s), s <= t, under a measure that weights the past. For the measures
below c obeys a linear ODE, which the paper writes as c' = -A c + B u. This module returns
the negated matrix, so every function here fits x' = A x + B u. With indices n, k = 0 .. N-1
the paper's matrices are:

    LegS, uniform measure on [0, t], time-varying: c'(t) = (1/t) (-A c + B u)
        A_nk = sqrt(2n+1) sqrt(2k+1)  if n > k
               n + 1                  if n = k
               0                      if n < k
        B_n  = sqrt(2n+1)
        u(s t) ≈ Σ_n c_n(t) sqrt(2n+1) P_n(2s - 1) for s in [0, 1]

    LegT, uniform measure on the sliding window [t - θ, t] (the LMU matrices):
        A_nk = (2n+1)/θ · (-1)^(n-k)  if n >= k
               (2n+1)/θ               if n < k
        B_n  = (2n+1)/θ · (-1)^n
        u(t - d) ≈ Σ_n c_n(t) P_n(2d/θ - 1) for d in [0, θ]

    LagT, measure exp(-(t - s)) on (-∞, t], basis L_n(t - s):
        A_nk = 1  if n >= k,  0 otherwise
        B_n  = 1
        c_n(t) = ∫_{-∞}^t u(s) L_n(t - s) exp(-(t - s)) ds exactly

LegT's ODE is an approximation (the derivation replaces u(t - θ) by its reconstruction), while
LegS and LagT are exact projections. LegS has no fixed time scale, so its recurrence divides A
by the step index k. The paper discretizes that with a generalized bilinear transform, and
this module does the same with step size 1/k, see ``legs_transition``.

Diagonal initialisations from S4D (Gu, Goel, Gupta and Ré, 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"), for n = 0 .. N-1:

    S4D-Lin   A_n = -1/2 + iπn
    S4D-Inv   A_n = -1/2 + i (N'/π) (N'/(2n+1) - 1),   N' = 2N, see ``s4d_inv``
    S4D-Real  A_n = -(n + 1)

S4D-Real is the initialisation Mamba uses. Mamba stores A_log = log(1, 2, ..., N) per channel
and forms A = -exp(A_log) = -(1, 2, ..., N).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.polynomial import legendre

from mambakit.ssm.discretization import discretize_dense

HIPPO_MEASURES = ("legs", "legt", "lagt")
S4D_INITS = ("s4d-lin", "s4d-inv", "s4d-real")
LEGS_METHODS = ("bilinear", "euler", "backward_euler", "zoh", "log_zoh")


def _check_size(N: int) -> None:
    if not isinstance(N, int) or N < 1:
        raise ValueError(f"state size N must be a positive integer, got {N!r}")


def hippo_legs(N: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the HiPPO-LegS matrices in the sign convention x' = (1/t)(A x + B u).

    Returns:
        A (N, N), lower triangular with diagonal -(n+1); B (N,).
    """
    _check_size(N)
    n = torch.arange(N, dtype=dtype)
    root = torch.sqrt(2 * n + 1)
    paper_A = torch.tril(root[:, None] * root[None, :], diagonal=-1) + torch.diag(n + 1)
    return -paper_A, root


def hippo_legt(
    N: int, theta: float = 1.0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the HiPPO-LegT matrices for a window of length ``theta``, as x' = A x + B u.

    Returns:
        A (N, N); B (N,). Reconstruct with ``legt_reconstruct``.
    """
    _check_size(N)
    if theta <= 0:
        raise ValueError(f"window length theta must be positive, got {theta}")
    n = torch.arange(N, dtype=dtype)
    row = n[:, None]
    column = n[None, :]
    alternating = torch.where((row - column) % 2 == 0, 1.0, -1.0).to(dtype)
    sign = torch.where(row >= column, alternating, torch.ones_like(alternating))
    paper_A = (2 * row + 1) / theta * sign
    B = (2 * n + 1) / theta * torch.where(n % 2 == 0, 1.0, -1.0).to(dtype)
    return -paper_A, B


def hippo_lagt(N: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the untilted HiPPO-LagT matrices (Laguerre, alpha = 0) as x' = A x + B u.

    Returns:
        A (N, N), minus the lower triangle of ones; B (N,), all ones.
    """
    _check_size(N)
    return -torch.tril(torch.ones(N, N, dtype=dtype)), torch.ones(N, dtype=dtype)


def hippo_matrices(measure: str, N: int, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Build (A, B) for ``measure`` in ``HIPPO_MEASURES``; kwargs such as ``theta`` pass through."""
    builders = {"legs": hippo_legs, "legt": hippo_legt, "lagt": hippo_lagt}
    if measure not in builders:
        raise ValueError(f"unknown HiPPO measure {measure!r}; use one of {HIPPO_MEASURES}")
    return builders[measure](N, **kwargs)


def s4d_lin(N: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Build S4D-Lin, A_n = -1/2 + iπn; returns (N,) complex with the precision of ``dtype``."""
    _check_size(N)
    n = torch.arange(N, dtype=dtype)
    return torch.complex(torch.full_like(n, -0.5), math.pi * n)


def s4d_inv(N: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Build S4D-Inv, A_n = -1/2 + i (N'/π)(N'/(2n+1) - 1) with N' = 2N; returns (N,) complex.

    N' = 2N is the real state size that N modes and their complex conjugates represent. With
    it the imaginary parts approximate those of the eigenvalues of the normal part of
    HiPPO-LegS of size 2N (LegS plus P Pᵀ with P_n = sqrt(n + 1/2)), which decrease like
    1/(2n+1) in n. A test checks the match.
    """
    _check_size(N)
    n = torch.arange(N, dtype=dtype)
    real_state_size = 2 * N
    imag = real_state_size / math.pi * (real_state_size / (2 * n + 1) - 1)
    return torch.complex(torch.full_like(n, -0.5), imag)


def s4d_real(N: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Build S4D-Real, A_n = -(n + 1); returns (N,) real. Equals Mamba's -exp(A_log)."""
    _check_size(N)
    return -torch.arange(1, N + 1, dtype=dtype)


def s4d_init(name: str, N: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Build the diagonal initialisation ``name`` in ``S4D_INITS`` with N modes."""
    builders = {"s4d-lin": s4d_lin, "s4d-inv": s4d_inv, "s4d-real": s4d_real}
    if name not in builders:
        raise ValueError(f"unknown S4D initialisation {name!r}; use one of {S4D_INITS}")
    return builders[name](N, dtype=dtype)


def legs_transition(
    A: torch.Tensor, B: torch.Tensor, k, method: str = "bilinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Discretize steps k (1-based) of the LegS ODE c' = (1/t)(A c + B u).

    Args:
        A: LegS state matrix, (N, N). B: LegS input vector, (N,).
        k: step index, an int or a tensor of indices (S,).
        method: one of ``LEGS_METHODS``:

            ``"bilinear"``, ``"euler"``, ``"backward_euler"``, ``"zoh"``: the matrices A/k and B/k
            are frozen over the step and discretized with Δ = 1 (equivalently A, B with
            Δ = 1/k), as the HiPPO paper does. Bilinear is the paper's choice and is stable for
            every k because A/k has eigenvalues -(n+1)/k. After L steps its coefficients
            differ from the exact projection by an error of order 1/L.

            ``"log_zoh"``: substitutes τ = log t, which turns the ODE into the time-invariant
            dc/dτ = A c + B u, and applies exact ZOH over τ from log(k-1) to log(k). For input
            that is constant within each step this is exact, and step 1 (from t = 0) gives the
            projection of a constant, c = -A^-1 B u.

    Returns:
        (A_bar, B_bar): (N, N) and (N,) for an int k, (S, N, N) and (S, N) for a tensor.
    """
    if method not in LEGS_METHODS:
        raise ValueError(f"unknown LegS discretization {method!r}; use one of {LEGS_METHODS}")
    steps = torch.as_tensor(k, dtype=A.dtype, device=A.device)
    if bool((steps < 1).any()):
        raise ValueError(f"LegS step index k starts at 1, got min {steps.min().item():g}")
    B_column = B[:, None]
    if method != "log_zoh":
        A_bar, B_bar = discretize_dense(A, B_column, 1.0 / steps, method)
        return A_bar, B_bar[..., 0]

    identity = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    is_first = steps == 1
    # Step 1 runs τ from -∞ to 0, where exp(τ A) -> 0 for a stable A. Its previous index is
    # set to 1 only to keep the logarithm finite before torch.where puts in A_bar = 0.
    previous = torch.where(is_first, steps, steps - 1)
    log_step = torch.log(steps / previous)
    A_bar = torch.linalg.matrix_exp(log_step[..., None, None] * A)
    A_bar = torch.where(is_first[..., None, None], torch.zeros_like(A_bar), A_bar)
    # With A_bar = 0 at step 1 this is the same solve: A^-1 (0 - I) B = -A^-1 B.
    B_bar = torch.linalg.solve(A.expand_as(A_bar), (A_bar - identity) @ B_column)
    return A_bar, B_bar[..., 0]


def legs_online_coefficients(
    signal: torch.Tensor, N: int, method: str = "bilinear", chunk_size: int = 256
) -> torch.Tensor:
    """Feed a signal through the discretized HiPPO-LegS recurrence, one sample per step.

    Args:
        signal: samples u_1 .. u_L, (..., L). Sample k stands for the input during step k,
            the interval [(k-1)/L, k/L] of the history once all L samples are in.
        N: number of Legendre coefficients.
        method: see ``legs_transition``.
        chunk_size: steps whose matrices are built at once, which bounds the memory for the
            transitions to chunk_size * N * N numbers.

    Returns:
        The state after every step, (..., L, N). Row k contains the coefficients of the history
        up to step k. ``legs_reconstruct`` turns a row back into a function of s in [0, 1].

    The recurrence is c_k = A_bar_k c_{k-1} + B_bar_k u_k with c_0 = 0. It runs in the dtype
    of ``signal``, so pass float64 for N above about 32.
    """
    A, B = hippo_legs(N, dtype=signal.dtype)
    A = A.to(signal.device)
    B = B.to(signal.device)
    length = signal.shape[-1]
    state = torch.zeros(*signal.shape[:-1], N, dtype=signal.dtype, device=signal.device)
    states = []
    for chunk_start in range(0, length, chunk_size):
        steps = torch.arange(chunk_start + 1, min(chunk_start + chunk_size, length) + 1)
        A_bars, B_bars = legs_transition(A, B, steps.to(signal.device), method)
        for offset in range(len(steps)):
            sample = signal[..., chunk_start + offset, None]
            state = state @ A_bars[offset].T + sample * B_bars[offset]
            states.append(state)
    return torch.stack(states, dim=-2)


def legs_reconstruct(coefficients: torch.Tensor, positions) -> torch.Tensor:
    """Evaluate Σ_n c_n sqrt(2n+1) P_n(2s - 1) at relative positions s in [0, 1].

    Args:
        coefficients: LegS state, (..., N).
        positions: s, (Q,). s = 1 is the present and s = 0 the start of the history.

    Returns:
        The reconstructed history, (..., Q).
    """
    positions = np.asarray(positions, dtype=np.float64)
    N = coefficients.shape[-1]
    basis = legendre.legvander(2 * positions - 1, N - 1) * np.sqrt(2 * np.arange(N) + 1)
    basis = torch.as_tensor(basis, dtype=coefficients.dtype, device=coefficients.device)
    return coefficients @ basis.T


def legt_reconstruct(coefficients: torch.Tensor, delays, theta: float = 1.0) -> torch.Tensor:
    """Evaluate u(t - d) ≈ Σ_n c_n P_n(2d/θ - 1) from a LegT state at delays d in [0, θ].

    Args:
        coefficients: LegT state, (..., N).
        delays: d, (Q,).
        theta: the window length the matrices were built with.

    Returns:
        The reconstructed window, (..., Q), index q approximating the input d_q ago.
    """
    delays = np.asarray(delays, dtype=np.float64)
    N = coefficients.shape[-1]
    basis = legendre.legvander(2 * delays / theta - 1, N - 1)
    basis = torch.as_tensor(basis, dtype=coefficients.dtype, device=coefficients.device)
    return coefficients @ basis.T
