"""S4DLayer: convolution against recurrence, the Vandermonde kernel, gradients and checks."""

import pytest
import torch

from mambakit.ssm.lti import S4DLayer

CONFIGURATIONS = [
    ("s4d-lin", False),
    ("s4d-inv", False),
    ("s4d-real", False),
    ("s4d-real", True),
]


def _layer(init="s4d-lin", real=False, d_model=6, d_state=8, seed=0, **kwargs) -> S4DLayer:
    torch.manual_seed(seed)
    return S4DLayer(d_model, d_state, init=init, real=real, **kwargs).double()


@pytest.mark.parametrize(("init", "real"), CONFIGURATIONS)
def test_convolution_equals_recurrence(init, real):
    layer = _layer(init, real, dt_min=1e-2, dt_max=0.5)
    u = torch.randn(3, 64, 6, dtype=torch.float64)
    convolution = layer(u)
    recurrence, _ = layer.recurrent_forward(u)
    torch.testing.assert_close(convolution, recurrence, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("init", "real"), CONFIGURATIONS)
def test_vandermonde_kernel_equals_naive_powers(init, real):
    layer = _layer(init, real)
    length = 40
    with torch.no_grad():
        A_bar, B_bar = layer.discretize()
        C = layer.C if real else torch.view_as_complex(layer.C)
        power = torch.ones_like(A_bar)
        naive = []
        for _ in range(length):
            term = (C * power * B_bar).sum(dim=-1)
            naive.append(term if real else 2 * term.real)
            power = power * A_bar
        torch.testing.assert_close(
            layer.kernel(length), torch.stack(naive, dim=-1), atol=1e-12, rtol=0
        )


def test_fft_convolution_equals_direct_sum():
    # A length-L FFT would wrap the tail onto the start. The 2L padding must give the plain
    # causal sum y_k = Σ_{j<=k} K_{k-j} u_j + D u_k.
    layer = _layer(dt_min=1e-2, dt_max=0.5)
    length = 33
    u = torch.randn(2, length, 6, dtype=torch.float64)
    with torch.no_grad():
        K = layer.kernel(length)
        direct = torch.zeros_like(u)
        for k in range(length):
            for j in range(k + 1):
                direct[:, k] += K[:, k - j] * u[:, j]
        direct += layer.D * u
        torch.testing.assert_close(layer.ssm_convolution(u), direct, atol=1e-12, rtol=0)


def test_convolution_is_causal():
    layer = _layer()
    u = torch.randn(1, 50, 6, dtype=torch.float64)
    changed = u.clone()
    changed[:, 30:] += 5.0
    torch.testing.assert_close(layer(changed)[:, :30], layer(u)[:, :30], atol=1e-12, rtol=0)


@pytest.mark.parametrize(("init", "real"), CONFIGURATIONS)
def test_final_state_equals_recurrent_state(init, real):
    layer = _layer(init, real)
    u = torch.randn(2, 30, 6, dtype=torch.float64)
    _, state = layer.recurrent_forward(u)
    torch.testing.assert_close(layer.final_state(u), state, atol=1e-12, rtol=0)


def test_step_continues_after_prompt():
    layer = _layer()
    u = torch.randn(2, 40, 6, dtype=torch.float64)
    full = layer(u)
    state = layer.final_state(u[:, :25])
    continued, _ = layer.recurrent_forward(u[:, 25:], state)
    torch.testing.assert_close(continued, full[:, 25:], atol=1e-10, rtol=0)


def test_float32_modes_agree():
    torch.manual_seed(1)
    layer = S4DLayer(16, 32)
    u = torch.randn(2, 128, 16)
    recurrence, _ = layer.recurrent_forward(u)
    torch.testing.assert_close(layer(u), recurrence, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("init", "real"), CONFIGURATIONS)
def test_gradients_flow_to_all_parameters(init, real):
    layer = _layer(init, real)
    u = torch.randn(2, 20, 6, dtype=torch.float64, requires_grad=True)
    layer(u).square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert u.grad.abs().sum() > 0


def test_shapes_and_parameter_layout():
    complex_layer = S4DLayer(12, d_state=10)
    assert complex_layer.num_modes == 5
    assert complex_layer.state_matrix().shape == (12, 5)
    assert complex_layer.state_matrix().is_complex()
    assert complex_layer.initial_state(3).shape == (3, 12, 5)
    real_layer = S4DLayer(12, d_state=10, init="s4d-real", real=True)
    assert real_layer.num_modes == 10
    assert not real_layer.state_matrix().is_complex()
    u = torch.randn(2, 17, 12)
    assert complex_layer(u).shape == (2, 17, 12)
    assert real_layer(u).shape == (2, 17, 12)
    assert complex_layer(u.double()).dtype == torch.float64


def test_step_sizes_within_range():
    layer = S4DLayer(200, 4, dt_min=1e-3, dt_max=1e-1)
    dt = torch.exp(layer.log_dt)
    assert dt.min() >= 1e-3 * (1 - 1e-6)
    assert dt.max() <= 1e-1 * (1 + 1e-6)


def test_state_matrix_initialisations():
    lin = S4DLayer(3, 8, init="s4d-lin").state_matrix().detach()
    torch.testing.assert_close(lin.real, torch.full((3, 4), -0.5))
    torch.testing.assert_close(lin.imag[0], torch.pi * torch.arange(4, dtype=torch.float32))
    real = S4DLayer(3, 8, init="s4d-real", real=True).state_matrix().detach()
    torch.testing.assert_close(real[1], -torch.arange(1, 9, dtype=torch.float32))


def test_dropout_only_in_training():
    layer = S4DLayer(8, 8, dropout=0.5)
    u = torch.randn(2, 10, 8)
    layer.eval()
    torch.testing.assert_close(layer(u), layer(u))
    layer.train()
    torch.manual_seed(0)
    first = layer(u)
    torch.manual_seed(1)
    assert not torch.allclose(first, layer(u))


def test_invalid_arguments_rejected():
    with pytest.raises(ValueError, match="d_state must be even"):
        S4DLayer(4, 7)
    with pytest.raises(ValueError, match="real=True needs init='s4d-real'"):
        S4DLayer(4, 8, real=True)
    with pytest.raises(ValueError, match="0 < dt_min <= dt_max"):
        S4DLayer(4, 8, dt_min=0.1, dt_max=0.01)
    with pytest.raises(ValueError, match="unknown init 'hippo'"):
        S4DLayer(4, 8, init="hippo")
    layer = S4DLayer(4, 8)
    with pytest.raises(ValueError, match=r"input must have shape \(batch, length, d_model=4\)"):
        layer(torch.randn(2, 10, 5))
    with pytest.raises(ValueError, match="u_t must have shape"):
        layer.step(torch.randn(2, 10, 4), layer.initial_state(2))


def test_fast_fft_length_is_smallest_smooth_length():
    from mambakit.ssm.lti import fast_fft_length

    def smooth(n):
        for prime in (2, 3, 5):
            while n % prime == 0:
                n //= prime
        return n == 1

    for minimum in range(1, 400):
        length = fast_fft_length(minimum)
        assert length >= minimum
        assert smooth(length)
        assert not any(smooth(n) for n in range(minimum, length))
    with pytest.raises(ValueError, match="minimum must be positive, got 0"):
        fast_fft_length(0)
