"""Continuous-time linear state space model and its exact responses.

Glossary of shape letters and symbols:

    N   state size (length of x)
    M   input size (length of u)
    P   output size (length of y)
    T   number of time points at which a response is evaluated
    A   state matrix, (N, N)
    B   input matrix, (N, M)
    C   output matrix, (P, N)
    D   feedthrough matrix, (P, M)
    Δ   step size of a discretization (see ``mambakit.ssm.discretization``)

The model is the linear time-invariant ODE

    x'(t) = A x(t) + B u(t)
    y(t)  = C x(t) + D u(t),        x(0) = 0.

Its responses to two simple inputs have closed forms, which makes them the ground truth
against which discretizations are measured:

    impulse response (u = δ(t)):        h(t) = C exp(At) B           (plus D δ(t), not sampled)
    step response    (u = 1 for t >= 0): s(t) = C (∫_0^t exp(As) ds) B + D
                                         s(t) = C A^-1 (exp(At) - I) B + D    when A is invertible

The integral ∫_0^t exp(As) ds B is computed from one matrix exponential of the augmented matrix
[[A, B], [0, 0]] (Van Loan's method), whose top-right block after exponentiation by t is exactly
that integral. This route works for singular A as well, so ``step_response`` uses it by default
and keeps the A^-1 closed form as a cross-check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

STEP_RESPONSE_METHODS = ("augmented", "closed_form")


def _as_times(t, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Convert a scalar or 1-D sequence of times to a tensor of shape (T,)."""
    times = torch.as_tensor(t, dtype=dtype, device=device)
    if times.ndim == 0:
        times = times.reshape(1)
    if times.ndim != 1:
        raise ValueError(
            f"times must be a scalar or a 1-D tensor, got shape {tuple(times.shape)}; "
            "flatten them first"
        )
    return times


def integrate_matrix_exponential(A: torch.Tensor, B: torch.Tensor, t) -> torch.Tensor:
    """Compute ∫_0^t exp(As) ds B for each time in ``t`` with one augmented matrix exponential.

    Args:
        A: state matrix, (N, N).
        B: input matrix, (N, M).
        t: times, a scalar or (T,).

    Returns:
        The integrals, (T, N, M).

    exp(t [[A, B], [0, 0]]) = [[exp(At), ∫_0^t exp(As) ds B], [0, I]], so the top-right block is
    the integral without inverting A, so it is defined for singular A too.
    """
    N, M = B.shape
    times = _as_times(t, A.dtype, A.device)
    augmented = torch.zeros(N + M, N + M, dtype=A.dtype, device=A.device)
    augmented[:N, :N] = A
    augmented[:N, N:] = B
    exponentials = torch.linalg.matrix_exp(times[:, None, None] * augmented)
    return exponentials[:, :N, N:]


def impulse_response(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, t) -> torch.Tensor:
    """Evaluate the impulse response h(t) = C exp(At) B.

    Args:
        A: (N, N). B: (N, M). C: (P, N).
        t: times, a scalar or (T,).

    Returns:
        h at each time, (T, P, M). The D δ(t) term is left out because a Dirac delta has no
        finite sample value.
    """
    times = _as_times(t, A.dtype, A.device)
    exponentials = torch.linalg.matrix_exp(times[:, None, None] * A)
    return C @ exponentials @ B


def step_response(
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
    t,
    method: str = "augmented",
) -> torch.Tensor:
    """Evaluate the unit step response s(t) = C ∫_0^t exp(As) ds B + D.

    Args:
        A: (N, N). B: (N, M). C: (P, N). D: (P, M).
        t: times, a scalar or (T,). The step switches on at t = 0.
        method: ``"augmented"`` (any A, see ``integrate_matrix_exponential``) or
            ``"closed_form"``, which computes C A^-1 (exp(At) - I) B + D with a linear solve and
            therefore needs an invertible A.

    Returns:
        s at each time, (T, P, M). Column j is the response to a unit step on input j.
    """
    if method == "augmented":
        integrals = integrate_matrix_exponential(A, B, t)
    elif method == "closed_form":
        times = _as_times(t, A.dtype, A.device)
        N = A.shape[0]
        identity = torch.eye(N, dtype=A.dtype, device=A.device)
        exponentials = torch.linalg.matrix_exp(times[:, None, None] * A)
        # A and exp(At) commute, so A^-1 (exp(At) - I) B is one solve per time with the same A.
        integrals = torch.linalg.solve(A.expand(len(times), N, N), (exponentials - identity) @ B)
    else:
        raise ValueError(
            f"unknown step response method {method!r}; use one of {STEP_RESPONSE_METHODS}"
        )
    return C @ integrals + D


@dataclass(frozen=True)
class ContinuousSSM:
    """Continuous-time SSM x' = A x + B u, y = C x + D u, with dense matrices.

    Attributes:
        A: state matrix, (N, N).
        B: input matrix, (N, M).
        C: output matrix, (P, N).
        D: feedthrough matrix, (P, M).

    Use ``ContinuousSSM.single_input`` to build one from a vector B and a vector C.
    """

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor

    def __post_init__(self) -> None:
        A, B, C, D = self.A, self.B, self.C, self.D
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square (N, N), got shape {tuple(A.shape)}")
        N = A.shape[0]
        if B.ndim != 2 or B.shape[0] != N:
            raise ValueError(
                f"B must have shape (N, M) = ({N}, M), got {tuple(B.shape)}; "
                "reshape a vector B to (N, 1)"
            )
        if C.ndim != 2 or C.shape[1] != N:
            raise ValueError(
                f"C must have shape (P, N) = (P, {N}), got {tuple(C.shape)}; "
                "reshape a vector C to (1, N)"
            )
        if D.shape != (C.shape[0], B.shape[1]):
            raise ValueError(
                f"D must have shape (P, M) = ({C.shape[0]}, {B.shape[1]}), got {tuple(D.shape)}"
            )

    @classmethod
    def single_input(
        cls, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: float = 0.0
    ) -> ContinuousSSM:
        """Build a single-input single-output system from A (N, N), B (N,), C (N,) and scalar D."""
        return cls(
            A=A,
            B=B.reshape(-1, 1),
            C=C.reshape(1, -1),
            D=torch.full((1, 1), float(D), dtype=A.dtype, device=A.device),
        )

    @property
    def state_size(self) -> int:
        return self.A.shape[0]

    def is_stable(self) -> bool:
        """Return whether every eigenvalue of A has a negative real part."""
        return bool(torch.linalg.eigvals(self.A).real.max() < 0)

    def derivative(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Evaluate x' = A x + B u for x (..., N) and u (..., M); returns (..., N)."""
        return x @ self.A.T + u @ self.B.T

    def output(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Evaluate y = C x + D u for x (..., N) and u (..., M); returns (..., P)."""
        return x @ self.C.T + u @ self.D.T

    def impulse_response(self, t) -> torch.Tensor:
        """Evaluate C exp(At) B at times t (scalar or (T,)); returns (T, P, M)."""
        return impulse_response(self.A, self.B, self.C, t)

    def step_response(self, t, method: str = "augmented") -> torch.Tensor:
        """Evaluate the unit step response at times t (scalar or (T,)); returns (T, P, M)."""
        return step_response(self.A, self.B, self.C, self.D, t, method=method)


def random_stable_ssm(
    state_size: int,
    input_size: int = 1,
    output_size: int = 1,
    margin: float = 0.1,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> ContinuousSSM:
    """Draw a random stable system whose A has eigenvalues with real part <= -margin.

    A = S - G Gᵀ / N - margin I with S skew-symmetric and G Gaussian. The symmetric part of A
    is then negative definite, so every eigenvalue has real part <= -margin, while S adds
    imaginary parts and makes the responses oscillate.
    """
    if margin <= 0:
        raise ValueError(f"margin must be positive for a stable A, got {margin}")
    generator = torch.Generator().manual_seed(seed)

    def gaussian(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    skew = gaussian(state_size, state_size)
    skew = skew - skew.T
    factor = gaussian(state_size, state_size)
    identity = torch.eye(state_size, dtype=dtype)
    A = skew - factor @ factor.T / state_size - margin * identity
    return ContinuousSSM(
        A=A,
        B=gaussian(state_size, input_size),
        C=gaussian(output_size, state_size),
        D=gaussian(output_size, input_size),
    )
