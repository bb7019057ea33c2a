"""HiPPO matrices against closed forms and projections, S4D inits and LegS reconstruction."""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import laguerre, legendre

from mambakit.ssm.discretization import discretize_dense
from mambakit.ssm.hippo import (
    LEGS_METHODS,
    hippo_lagt,
    hippo_legs,
    hippo_legt,
    hippo_matrices,
    legs_online_coefficients,
    legs_reconstruct,
    legs_transition,
    legt_reconstruct,
    s4d_init,
    s4d_inv,
    s4d_lin,
    s4d_real,
)
from mambakit.ssm.lti import S4DLayer


def _smooth_signal(s):
    return np.sin(20 * s) + 0.5 * np.cos(40 * s**2)


def _rms(values) -> float:
    return float(np.sqrt(np.mean(np.asarray(values) ** 2)))


def _exact_legs_coefficients(function, N):
    """Project ``function`` on [0, 1] onto sqrt(2n+1) P_n(2s - 1) by Gauss-Legendre quadrature."""
    nodes, weights = legendre.leggauss(200)
    basis = legendre.legvander(nodes, N - 1) * np.sqrt(2 * np.arange(N) + 1)
    return basis.T @ (weights / 2 * function((nodes + 1) / 2))


def _simulate_zoh(A, B, signal, delta):
    """Run x_k = A_bar x_{k-1} + B_bar u_k with exact ZOH for dense A (N, N), B (N,)."""
    A_bar, B_bar = discretize_dense(A, B[:, None], delta, "zoh")
    state = torch.zeros(A.shape[0], dtype=A.dtype)
    for sample in signal:
        state = A_bar @ state + B_bar[:, 0] * sample
    return state


def test_legs_matches_closed_form():
    N = 6
    A, B = hippo_legs(N)
    for n in range(N):
        assert B[n].item() == pytest.approx(math.sqrt(2 * n + 1))
        for k in range(N):
            if n > k:
                expected = math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                expected = n + 1
            else:
                expected = 0.0
            assert A[n, k].item() == pytest.approx(-expected), (n, k)


def test_legt_matches_closed_form():
    N, theta = 6, 2.5
    A, B = hippo_legt(N, theta=theta)
    for n in range(N):
        assert B[n].item() == pytest.approx((2 * n + 1) / theta * (-1) ** n)
        for k in range(N):
            expected = (2 * n + 1) / theta * ((-1) ** (n - k) if n >= k else 1)
            assert A[n, k].item() == pytest.approx(-expected), (n, k)


def test_lagt_matches_closed_form():
    N = 6
    A, B = hippo_lagt(N)
    for n in range(N):
        assert B[n].item() == 1.0
        for k in range(N):
            assert A[n, k].item() == (-1.0 if n >= k else 0.0), (n, k)


def test_hippo_matrices_dispatch():
    torch.testing.assert_close(hippo_matrices("legs", 4)[0], hippo_legs(4)[0])
    torch.testing.assert_close(hippo_matrices("legt", 4, theta=3.0)[1], hippo_legt(4, theta=3.0)[1])
    torch.testing.assert_close(hippo_matrices("lagt", 4)[0], hippo_lagt(4)[0])
    with pytest.raises(ValueError, match="unknown HiPPO measure 'fourier'"):
        hippo_matrices("fourier", 4)


def test_legs_eigenvalues_and_normal_plus_low_rank():
    # LegS is lower triangular with eigenvalues -(n+1), and A + P Pᵀ with P_n = sqrt(n + 1/2)
    # is -I/2 plus a skew-symmetric matrix: the normal plus low-rank form S4 builds on.
    N = 8
    A, _ = hippo_legs(N)
    torch.testing.assert_close(torch.diagonal(A), -torch.arange(1, N + 1, dtype=torch.float64))
    P = torch.sqrt(torch.arange(N, dtype=torch.float64) + 0.5)
    normal = A + torch.outer(P, P)
    torch.testing.assert_close(torch.diagonal(normal), torch.full((N,), -0.5, dtype=torch.float64))
    off_diagonal = normal - torch.diag(torch.diagonal(normal))
    torch.testing.assert_close(off_diagonal, -off_diagonal.T)


def test_legt_constant_input_gives_first_coefficient():
    # For u = 1 the steady state solves A c = -B, and A's first column equals -B, so c = e_0:
    # the window is reconstructed as exactly 1.
    A, B = hippo_legt(10, theta=1.5)
    steady = torch.linalg.solve(A, -B)
    expected = torch.zeros(10, dtype=torch.float64)
    expected[0] = 1.0
    torch.testing.assert_close(steady, expected)


def test_legt_reconstructs_sliding_window():
    N, theta, delta = 12, 2.0, 1e-3
    times = (np.arange(int(10.0 / delta)) + 0.5) * delta
    function = lambda t: np.sin(2 * t) + 0.3 * np.cos(5 * t)
    A, B = hippo_legt(N, theta=theta)
    state = _simulate_zoh(A, B, torch.tensor(function(times)), delta)
    delays = np.linspace(0, theta, 101)
    reconstruction = legt_reconstruct(state, delays, theta=theta).numpy()
    # The LegT ODE itself is approximate, so the window is matched to about 1e-3, not to rounding.
    np.testing.assert_allclose(reconstruction, function(10.0 - delays), atol=1e-3)


def test_lagt_state_equals_laguerre_projection():
    N, delta, end = 8, 1e-3, 10.0
    times = (np.arange(int(end / delta)) + 0.5) * delta
    function = lambda t: np.sin(2 * t) + 0.3 * np.cos(5 * t)
    A, B = hippo_lagt(N)
    state = _simulate_zoh(A, B, torch.tensor(function(times)), delta).numpy()
    # c_n(t) = ∫_0^t u(s) L_n(t - s) exp(-(t - s)) ds, by the trapezoid rule on a fine grid.
    grid = np.linspace(0, end, 200_001)
    age = end - grid
    weighted_basis = laguerre.lagvander(age, N - 1) * np.exp(-age)[:, None]
    projection = np.trapezoid(weighted_basis * function(grid)[:, None], grid, axis=0)
    np.testing.assert_allclose(state, projection, atol=1e-6)


def test_legs_reconstruction_improves_with_n():
    length = 1000
    positions = (np.arange(1, length + 1) - 0.5) / length
    signal = torch.tensor(_smooth_signal(positions))
    errors = []
    for N in (8, 16, 32):
        coefficients = legs_online_coefficients(signal, N, method="bilinear")[-1]
        errors.append(
            _rms(legs_reconstruct(coefficients, positions).numpy() - _smooth_signal(positions))
        )
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05 * errors[0]


@pytest.mark.parametrize("N", [8, 16, 32])
def test_legs_log_zoh_reaches_projection(N):
    # The log-time ZOH is exact for input held constant over each step, so its error is the
    # projection error plus a sampling error far below it at L = 1000.
    length = 1000
    positions = (np.arange(1, length + 1) - 0.5) / length
    signal = torch.tensor(_smooth_signal(positions))
    coefficients = legs_online_coefficients(signal, N, method="log_zoh")[-1]
    online_error = _rms(
        legs_reconstruct(coefficients, positions).numpy() - _smooth_signal(positions)
    )
    exact = torch.tensor(_exact_legs_coefficients(_smooth_signal, N))
    projection_error = _rms(legs_reconstruct(exact, positions).numpy() - _smooth_signal(positions))
    assert online_error == pytest.approx(projection_error, rel=0.01)


def test_legs_bilinear_converges_first_order_in_length():
    N = 16
    exact = _exact_legs_coefficients(_smooth_signal, N)
    errors = []
    for length in (500, 1000, 2000):
        positions = (np.arange(1, length + 1) - 0.5) / length
        coefficients = legs_online_coefficients(torch.tensor(_smooth_signal(positions)), N)[-1]
        errors.append(np.abs(coefficients.numpy() - exact).max())
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    for ratio in ratios:
        assert 1.7 < ratio < 2.3


def test_legs_first_step_projects_constant():
    # After one step of the log-time ZOH the history is a constant, whose projection is u e_0.
    A, B = hippo_legs(6)
    _, B_bar = legs_transition(A, B, 1, "log_zoh")
    expected = torch.zeros(6, dtype=torch.float64)
    expected[0] = 1.0
    torch.testing.assert_close(B_bar, expected)


@pytest.mark.parametrize("method", LEGS_METHODS)
def test_legs_batched_transition_equals_single(method):
    A, B = hippo_legs(5)
    A_bars, B_bars = legs_transition(A, B, torch.tensor([1, 2, 9]), method)
    for i, k in enumerate([1, 2, 9]):
        A_bar, B_bar = legs_transition(A, B, k, method)
        torch.testing.assert_close(A_bars[i], A_bar)
        torch.testing.assert_close(B_bars[i], B_bar)


def test_legs_online_batches_and_chunks():
    signals = torch.randn(3, 70, dtype=torch.float64)
    batched = legs_online_coefficients(signals, 6, chunk_size=16)
    assert batched.shape == (3, 70, 6)
    single = legs_online_coefficients(signals[1], 6, chunk_size=256)
    torch.testing.assert_close(batched[1], single)


def test_s4d_lin_values():
    A = s4d_lin(5)
    assert A.dtype == torch.complex64
    torch.testing.assert_close(A.real, torch.full((5,), -0.5))
    torch.testing.assert_close(A.imag, math.pi * torch.arange(5, dtype=torch.float32))


def test_s4d_inv_values():
    N = 4
    A = s4d_inv(N, dtype=torch.float64)
    torch.testing.assert_close(A.real, torch.full((N,), -0.5, dtype=torch.float64))
    expected = [2 * N / math.pi * (2 * N / (2 * n + 1) - 1) for n in range(N)]
    torch.testing.assert_close(A.imag, torch.tensor(expected, dtype=torch.float64))


def test_s4d_inv_follows_legs_normal_eigenvalues():
    # S4D-Inv with N modes approximates the imaginary parts of the eigenvalues of LegS's normal
    # part of size 2N, which come in conjugate pairs.
    modes = 32
    A, _ = hippo_legs(2 * modes)
    P = torch.sqrt(torch.arange(2 * modes, dtype=torch.float64) + 0.5)
    eigenvalues = torch.linalg.eigvals(A + torch.outer(P, P))
    positive_imag = eigenvalues.imag[eigenvalues.imag > 0].sort(descending=True).values
    approximation = s4d_inv(modes, dtype=torch.float64).imag
    assert positive_imag.shape == (modes,)
    relative_error = (approximation - positive_imag).abs() / positive_imag
    assert relative_error[0] < 0.02
    assert relative_error.max() < 0.3


def test_s4d_real_equals_mamba_a_log_init():
    # Mamba's mixer initialises A_log = log(arange(1, d_state + 1)) repeated over d_inner
    # channels and uses A = -exp(A_log).
    d_inner, d_state = 6, 16
    mamba_A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
    torch.testing.assert_close(-torch.exp(mamba_A_log), s4d_real(d_state).repeat(d_inner, 1))
    layer = S4DLayer(d_inner, d_state, init="s4d-real", real=True)
    torch.testing.assert_close(layer.A_log.detach(), mamba_A_log, rtol=0, atol=0)


def test_s4d_init_dispatch_and_errors():
    torch.testing.assert_close(s4d_init("s4d-real", 3), s4d_real(3))
    with pytest.raises(ValueError, match="unknown S4D initialisation 's4d-legs'"):
        s4d_init("s4d-legs", 3)
    with pytest.raises(ValueError, match="state size N must be a positive integer"):
        hippo_legs(0)
    with pytest.raises(ValueError, match="unknown LegS discretization"):
        legs_transition(*hippo_legs(3), 1, "rk4")
