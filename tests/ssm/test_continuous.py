"""Exact responses of the continuous SSM against scipy.signal and numeric integration."""

import numpy as np
import pytest
import scipy.integrate
import scipy.signal
import torch

from mambakit.ssm.continuous import (
    ContinuousSSM,
    impulse_response,
    integrate_matrix_exponential,
    random_stable_ssm,
    step_response,
)

TIMES = np.linspace(0.0, 6.0, 61)


def _numpy_system(system: ContinuousSSM, input_index: int):
    """Return (A, B, C, D) for one input column as numpy arrays, the form scipy.signal takes."""
    column = slice(input_index, input_index + 1)
    return (
        system.A.numpy(),
        system.B[:, column].numpy(),
        system.C.numpy(),
        system.D[:, column].numpy(),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_impulse_response_matches_scipy(seed):
    system = random_stable_ssm(5, input_size=2, output_size=3, seed=seed)
    ours = system.impulse_response(TIMES).numpy()
    assert ours.shape == (len(TIMES), 3, 2)
    for j in range(2):
        _, reference = scipy.signal.impulse(_numpy_system(system, j), T=TIMES)
        # scipy returns (T,) for one output and (T, P) for several.
        np.testing.assert_allclose(
            ours[:, :, j], np.asarray(reference).reshape(len(TIMES), -1), atol=1e-9
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_step_response_matches_scipy(seed):
    system = random_stable_ssm(5, input_size=2, output_size=3, seed=seed)
    ours = system.step_response(TIMES).numpy()
    for j in range(2):
        _, reference = scipy.signal.step(_numpy_system(system, j), T=TIMES)
        np.testing.assert_allclose(
            ours[:, :, j], np.asarray(reference).reshape(len(TIMES), -1), atol=1e-9
        )


def test_step_closed_form_equals_augmented():
    system = random_stable_ssm(6, input_size=2, output_size=2, seed=3)
    augmented = system.step_response(TIMES, method="augmented")
    closed_form = system.step_response(TIMES, method="closed_form")
    torch.testing.assert_close(closed_form, augmented, atol=1e-12, rtol=0)


def test_step_response_matches_ode_solver():
    system = random_stable_ssm(4, seed=4)
    A, B = system.A.numpy(), system.B.numpy()[:, 0]
    solution = scipy.integrate.solve_ivp(
        lambda t, x: A @ x + B, (0.0, TIMES[-1]), np.zeros(4), t_eval=TIMES, rtol=1e-11, atol=1e-12
    )
    integrated = system.C.numpy() @ solution.y + system.D.numpy()
    np.testing.assert_allclose(
        system.step_response(TIMES)[:, 0, 0].numpy(), integrated[0], atol=1e-8
    )


def test_impulse_response_matches_ode_solver():
    # An impulse at t = 0 puts the state at x(0+) = B, after which the input is zero.
    system = random_stable_ssm(4, seed=5)
    A = system.A.numpy()
    solution = scipy.integrate.solve_ivp(
        lambda t, x: A @ x,
        (0.0, TIMES[-1]),
        system.B.numpy()[:, 0],
        t_eval=TIMES,
        rtol=1e-11,
        atol=1e-12,
    )
    integrated = system.C.numpy() @ solution.y
    np.testing.assert_allclose(
        system.impulse_response(TIMES)[:, 0, 0].numpy(), integrated[0], atol=1e-8
    )


def test_step_response_of_double_integrator():
    # A is singular here, so only the augmented route applies: y = t^2 / 2 for x1'' = u.
    A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    system = ContinuousSSM.single_input(
        A, torch.tensor([0.0, 1.0]).double(), torch.tensor([1.0, 0.0]).double()
    )
    times = torch.tensor(TIMES)
    torch.testing.assert_close(
        system.step_response(times)[:, 0, 0], times**2 / 2, atol=1e-12, rtol=0
    )


def test_integrate_matrix_exponential_of_scalar():
    # ∫_0^t exp(a s) ds b = b (exp(a t) - 1) / a for a scalar a.
    a, b = -0.7, 1.3
    integrals = integrate_matrix_exponential(
        torch.tensor([[a]], dtype=torch.float64), torch.tensor([[b]], dtype=torch.float64), TIMES
    )
    np.testing.assert_allclose(integrals[:, 0, 0].numpy(), b * np.expm1(a * TIMES) / a, atol=1e-14)


def test_function_forms_match_methods():
    system = random_stable_ssm(3, seed=6)
    torch.testing.assert_close(
        impulse_response(system.A, system.B, system.C, 1.5), system.impulse_response(1.5)
    )
    torch.testing.assert_close(
        step_response(system.A, system.B, system.C, system.D, 1.5), system.step_response(1.5)
    )


def test_random_stable_ssm_is_stable():
    for seed in range(5):
        system = random_stable_ssm(8, margin=0.2, seed=seed)
        assert system.is_stable()
        assert torch.linalg.eigvals(system.A).real.max() <= -0.2 + 1e-12


def test_derivative_and_output():
    system = random_stable_ssm(3, input_size=2, output_size=2, seed=7)
    x = torch.randn(4, 3, dtype=torch.float64)
    u = torch.randn(4, 2, dtype=torch.float64)
    torch.testing.assert_close(system.derivative(x, u), (system.A @ x.T + system.B @ u.T).T)
    torch.testing.assert_close(system.output(x, u), (system.C @ x.T + system.D @ u.T).T)


def test_invalid_shapes_rejected():
    A = torch.eye(3)
    with pytest.raises(ValueError, match="A must be square"):
        ContinuousSSM(torch.ones(3, 2), torch.ones(3, 1), torch.ones(1, 3), torch.ones(1, 1))
    with pytest.raises(ValueError, match="B must have shape"):
        ContinuousSSM(A, torch.ones(3), torch.ones(1, 3), torch.ones(1, 1))
    with pytest.raises(ValueError, match="C must have shape"):
        ContinuousSSM(A, torch.ones(3, 1), torch.ones(3), torch.ones(1, 1))
    with pytest.raises(ValueError, match="D must have shape"):
        ContinuousSSM(A, torch.ones(3, 1), torch.ones(1, 3), torch.ones(2, 1))


def test_unknown_step_method_rejected():
    system = random_stable_ssm(2)
    with pytest.raises(ValueError, match="unknown step response method 'rk4'"):
        system.step_response(1.0, method="rk4")
