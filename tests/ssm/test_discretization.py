"""Discretization methods against scipy.signal.cont2discrete, their formulas and error orders."""

import numpy as np
import pytest
import scipy.signal
import torch

from mambakit.ssm.continuous import random_stable_ssm
from mambakit.ssm.discretization import (
    METHODS,
    discrete_response,
    discretize_dense,
    discretize_diagonal,
    estimate_order,
    step_response_error,
    zoh_simplification_error,
)

SMALL_DELTAS = [0.04, 0.02, 0.01, 0.005]


def _scipy_discretization(A, B, delta, method):
    """Return scipy's (A_bar, B_bar) for dense A (N, N) and B (N, M).

    scipy's bilinear method also changes C and D into an equivalent output equation. This
    module keeps C and D as S4 does, so only A_bar and B_bar are compared.
    """
    N, M = B.shape
    A_bar, B_bar, *_ = scipy.signal.cont2discrete(
        (A, B, np.eye(N), np.zeros((N, M))), delta, method=method
    )
    return A_bar, B_bar


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("delta", [0.01, 0.1, 0.7])
def test_dense_matches_scipy(method, seed, delta):
    system = random_stable_ssm(6, input_size=2, seed=seed)
    A_bar, B_bar = discretize_dense(system.A, system.B, delta, method)
    reference_A, reference_B = _scipy_discretization(
        system.A.numpy(), system.B.numpy(), delta, method
    )
    np.testing.assert_allclose(A_bar.numpy(), reference_A, rtol=0, atol=1e-12)
    np.testing.assert_allclose(B_bar.numpy(), reference_B, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_diagonal_matches_scipy(method, dtype):
    generator = torch.Generator().manual_seed(3)
    N = 8
    real_part = -torch.rand(N, generator=generator, dtype=torch.float64) * 3 - 0.05
    imag_part = torch.randn(N, generator=generator, dtype=torch.float64) * 4
    A = real_part if dtype == torch.float64 else torch.complex(real_part, imag_part)
    B = torch.randn(N, generator=generator, dtype=torch.float64).to(dtype)
    delta = 0.3
    A_bar, B_bar = discretize_diagonal(A, B, delta, method)
    reference_A, reference_B = _scipy_discretization(
        torch.diag(A).numpy(), B[:, None].numpy(), delta, method
    )
    np.testing.assert_allclose(A_bar.numpy(), np.diag(reference_A), rtol=0, atol=1e-12)
    np.testing.assert_allclose(B_bar.numpy(), reference_B[:, 0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_equals_dense_of_diagonal(method):
    generator = torch.Generator().manual_seed(4)
    A = torch.complex(
        -torch.rand(5, generator=generator, dtype=torch.float64) - 0.1,
        torch.randn(5, generator=generator, dtype=torch.float64),
    )
    B = torch.randn(5, generator=generator, dtype=torch.complex128)
    A_bar, B_bar = discretize_diagonal(A, B, 0.2, method)
    dense_A_bar, dense_B_bar = discretize_dense(torch.diag(A), B[:, None], 0.2, method)
    torch.testing.assert_close(torch.diag(dense_A_bar), A_bar, atol=1e-12, rtol=0)
    torch.testing.assert_close(dense_B_bar[:, 0], B_bar, atol=1e-12, rtol=0)


def test_euler_matches_formula():
    system = random_stable_ssm(4, input_size=2, seed=5)
    delta = 0.05
    A_bar, B_bar = discretize_dense(system.A, system.B, delta, "euler")
    torch.testing.assert_close(A_bar, torch.eye(4, dtype=torch.float64) + delta * system.A)
    torch.testing.assert_close(B_bar, delta * system.B)

    A = torch.tensor([-1.0, -2.0 + 3.0j])
    B = torch.tensor([0.5, 1.0 - 1.0j])
    diagonal_A_bar, diagonal_B_bar = discretize_diagonal(A, B, delta, "euler")
    torch.testing.assert_close(diagonal_A_bar, 1 + delta * A)
    torch.testing.assert_close(diagonal_B_bar, delta * B)


def test_backward_euler_matches_formula():
    system = random_stable_ssm(4, seed=6)
    delta = 0.05
    A_bar, B_bar = discretize_dense(system.A, system.B, delta, "backward_euler")
    inverse = torch.linalg.inv(torch.eye(4, dtype=torch.float64) - delta * system.A)
    torch.testing.assert_close(A_bar, inverse)
    torch.testing.assert_close(B_bar, inverse @ (delta * system.B))


def test_simplified_zoh_keeps_a_bar():
    system = random_stable_ssm(4, seed=7)
    exact_A_bar, _ = discretize_dense(system.A, system.B, 0.1, "zoh")
    simplified_A_bar, simplified_B_bar = discretize_dense(system.A, system.B, 0.1, "zoh_simplified")
    torch.testing.assert_close(simplified_A_bar, exact_A_bar)
    torch.testing.assert_close(simplified_B_bar, 0.1 * system.B)


def test_batched_delta_equals_loop():
    system = random_stable_ssm(4, input_size=2, seed=8)
    deltas = torch.tensor([0.01, 0.1, 1.0], dtype=torch.float64)
    for method in METHODS:
        A_bars, B_bars = discretize_dense(system.A, system.B, deltas, method)
        assert A_bars.shape == (3, 4, 4)
        assert B_bars.shape == (3, 4, 2)
        for i, delta in enumerate(deltas.tolist()):
            A_bar, B_bar = discretize_dense(system.A, system.B, delta, method)
            torch.testing.assert_close(A_bars[i], A_bar)
            torch.testing.assert_close(B_bars[i], B_bar)


def test_diagonal_broadcasts_mamba_layout():
    # Mamba: A (H, N), Δ (batch, L, H) -> A_bar (batch, L, H, N).
    A = -torch.arange(1, 5, dtype=torch.float64).repeat(3, 1)
    delta = torch.rand(2, 7, 3, dtype=torch.float64) + 0.01
    B = torch.randn(2, 7, 1, 4, dtype=torch.float64)
    A_bar, B_bar = discretize_diagonal(A, B, delta[..., None], "zoh_simplified")
    assert A_bar.shape == (2, 7, 3, 4)
    torch.testing.assert_close(A_bar, torch.exp(delta[..., None] * A))
    torch.testing.assert_close(B_bar, delta[..., None] * B)


def test_diagonal_zoh_at_zero_eigenvalue():
    A = torch.tensor([0.0, -1e-12, -1.0], dtype=torch.float64)
    B = torch.ones(3, dtype=torch.float64)
    A_bar, B_bar = discretize_diagonal(A, B, 0.5, "zoh")
    assert A_bar[0] == 1.0
    assert B_bar[0] == 0.5
    torch.testing.assert_close(B_bar[1], torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(B_bar[2], torch.tensor(-np.expm1(-0.5), dtype=torch.float64))


def test_zoh_step_response_is_exact():
    system = random_stable_ssm(5, input_size=2, output_size=2, seed=9)
    for delta in [0.01, 0.3, 1.0]:
        assert step_response_error(system, delta, "zoh", duration=5.0) < 1e-12


def test_discrete_response_samples_continuous_step():
    system = random_stable_ssm(4, seed=10)
    delta = 0.25
    A_bar, B_bar = discretize_dense(system.A, system.B, delta, "zoh")
    y = discrete_response(A_bar, B_bar, system.C, system.D, torch.ones(20, 1, dtype=torch.float64))
    times = delta * torch.arange(1, 21, dtype=torch.float64)
    torch.testing.assert_close(y, system.step_response(times)[:, :, 0], atol=1e-12, rtol=0)


def test_simplified_zoh_error_is_first_order():
    system = random_stable_ssm(4, seed=11)
    errors = zoh_simplification_error(system, SMALL_DELTAS, duration=5.0)
    b_bar_order = estimate_order(SMALL_DELTAS, errors.b_bar_relative_error)
    step_order = estimate_order(SMALL_DELTAS, errors.step_error_simplified)
    assert 0.9 < b_bar_order < 1.1
    assert 0.9 < step_order < 1.1
    # Exact ZOH keeps only rounding error, which grows as Δ shrinks because exp(ΔA) - I cancels.
    assert errors.step_error_zoh.max() < 1e-10
    assert torch.all(errors.step_error_simplified[1:] < errors.step_error_simplified[:-1])


def test_simplified_zoh_error_leading_term():
    # B_bar_zoh = ΔB + Δ²AB/2 + O(Δ³), so the relative error tends to Δ ‖AB‖ / (2 ‖B‖).
    system = random_stable_ssm(4, seed=12)
    delta = 1e-4
    errors = zoh_simplification_error(system, [delta], duration=0.01)
    predicted = delta * torch.linalg.norm(system.A @ system.B) / (2 * torch.linalg.norm(system.B))
    torch.testing.assert_close(errors.b_bar_relative_error[0], predicted, rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    ("method", "order"), [("bilinear", 2.0), ("euler", 1.0), ("backward_euler", 1.0)]
)
def test_step_response_error_order(method, order):
    system = random_stable_ssm(4, seed=13)
    errors = [step_response_error(system, delta, method, duration=5.0) for delta in SMALL_DELTAS]
    assert abs(estimate_order(SMALL_DELTAS, errors) - order) < 0.1


def test_invalid_arguments_rejected():
    system = random_stable_ssm(3)
    with pytest.raises(ValueError, match="must be positive"):
        discretize_dense(system.A, system.B, 0.0)
    with pytest.raises(ValueError, match="must be positive"):
        discretize_diagonal(torch.tensor([-1.0]), torch.tensor([1.0]), torch.tensor([0.1, -0.1]))
    with pytest.raises(ValueError, match="unknown discretization method 'rk4'"):
        discretize_dense(system.A, system.B, 0.1, "rk4")
    with pytest.raises(ValueError, match="unknown discretization method"):
        discretize_diagonal(torch.tensor([-1.0]), torch.tensor([1.0]), 0.1, "tustin")
    with pytest.raises(ValueError, match="B must have shape"):
        discretize_dense(system.A, torch.ones(2, 1, dtype=torch.float64), 0.1)
