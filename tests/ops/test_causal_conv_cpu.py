"""Checks of the numba causal convolution kernels against ``causal_conv1d``, forward and backward."""

import itertools

import pytest
import torch

pytest.importorskip("numba")

from mambakit.ops import causal_conv_cpu as cpu  # noqa: E402
from mambakit.ops.causal_conv import causal_conv1d, causal_conv1d_channels_last  # noqa: E402

WIDTHS = (2, 3, 4)
LENGTHS = (1, 2, 3, 5, 64)
BATCHES = (1, 3)
CHANNELS = 5


@pytest.fixture(autouse=True)
def numba_enabled(monkeypatch):
    monkeypatch.delenv(cpu.DISABLE_ENV_VAR, raising=False)
    if not cpu.available():
        pytest.skip(f"numba kernels unavailable: {cpu.unavailable_reason()}")


def make_inputs(batch, length, width, with_bias, with_window, strided, dtype=torch.float32, seed=0):
    """Return (xz, x, weight, bias, window); x is the first half of xz when ``strided``."""
    generator = torch.Generator().manual_seed(seed)
    if strided:
        xz = torch.randn(batch, length, 2 * CHANNELS, generator=generator, dtype=dtype)
        x = xz[..., :CHANNELS]
    else:
        xz = torch.randn(batch, length, CHANNELS, generator=generator, dtype=dtype)
        x = xz
    weight = torch.randn(CHANNELS, width, generator=generator, dtype=dtype)
    bias = torch.randn(CHANNELS, generator=generator, dtype=dtype) if with_bias else None
    window = torch.randn(batch, CHANNELS, width, generator=generator, dtype=dtype) if with_window else None
    return xz, x, weight, bias, window


def reference(x, weight, bias, window, activation):
    return causal_conv1d(x.transpose(1, 2), weight, bias, window=window, activation=activation).transpose(1, 2)


CASES = list(itertools.product(WIDTHS, LENGTHS, BATCHES, (False, True), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("width,length,batch,with_bias,with_window,activation,strided", CASES)
def test_forward_matches_reference(width, length, batch, with_bias, with_window, activation, strided):
    _, x, weight, bias, window = make_inputs(batch, length, width, with_bias, with_window, strided)

    out = cpu.causal_conv1d_cpu(x, weight, bias, window=window, activation=activation)
    expected = reference(x, weight, bias, window, activation)

    assert out.shape == (batch, length, CHANNELS)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width,length,batch,with_bias,with_window,activation,strided", CASES)
def test_gradients_match_reference(width, length, batch, with_bias, with_window, activation, strided):
    xz, x, weight, bias, window = make_inputs(batch, length, width, with_bias, with_window, strided)
    leaves = [xz, weight] + ([bias] if with_bias else [])
    for leaf in leaves:
        leaf.requires_grad_(True)
    x = xz[..., :CHANNELS]  # sliced again, so that it is part of the graph of xz
    grad_out = torch.randn(batch, length, CHANNELS, generator=torch.Generator().manual_seed(1))

    out = cpu.causal_conv1d_cpu(x, weight, bias, window=window, activation=activation)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_out = reference(x, weight, bias, window, activation)
    expected_grads = torch.autograd.grad(expected_out, leaves, grad_out)

    names = ("xz", "weight", "bias")
    for name, grad, expected in zip(names, grads, expected_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"grad of {name}: {m}")


def test_strided_input_read_without_copy(monkeypatch):
    _, x, weight, bias, _ = make_inputs(2, 6, 4, True, False, strided=True)
    seen = []
    original = cpu._rows_array

    def recording_rows_array(tensor):
        array = original(tensor)
        seen.append(array)
        return array

    monkeypatch.setattr(cpu, "_rows_array", recording_rows_array)
    cpu.causal_conv1d_cpu(x, weight, bias)

    assert seen[0].shape == (2, 6, 2 * CHANNELS)
    assert seen[0].ctypes.data == x.data_ptr()


def test_second_half_view_matches_reference():
    # The z half of a (b, l, 2d) tensor: widening its rows would read past the end of the
    # storage, so the kernel gets a copy.
    generator = torch.Generator().manual_seed(2)
    xz = torch.randn(2, 6, 2 * CHANNELS, generator=generator)
    x = xz[..., CHANNELS:]
    weight = torch.randn(CHANNELS, 4, generator=generator)

    out = cpu.causal_conv1d_cpu(x, weight)
    expected = reference(x, weight, None, None, True)

    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_window_is_not_modified():
    _, x, weight, bias, window = make_inputs(2, 3, 4, True, True, strided=False)
    before = window.clone()

    cpu.causal_conv1d_cpu(x, weight, bias, window=window)

    assert torch.equal(window, before)


def test_backward_after_window_update_uses_old_window():
    xz, x, weight, bias, window = make_inputs(1, 3, 4, True, True, strided=False)
    xz.requires_grad_(True)
    weight.requires_grad_(True)
    expected_out = reference(x, weight, bias, window.clone(), True)
    expected = torch.autograd.grad(expected_out.sum(), weight)[0]

    out = cpu.causal_conv1d_cpu(x, weight, bias, window=window)
    window.zero_()
    grad = torch.autograd.grad(out.sum(), weight)[0]

    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_half_precision_runs_in_fp32():
    _, x, weight, bias, window = make_inputs(2, 5, 4, True, True, strided=True)
    x_bf16 = x.to(torch.bfloat16)

    out = cpu.causal_conv1d_cpu(x_bf16, weight, bias, window=window)
    expected = reference(x_bf16.float(), weight, bias, window, True)

    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)


def test_gradcheck_fp64():
    xz, x, weight, bias, window = make_inputs(2, 4, 3, True, True, strided=True, dtype=torch.float64)
    for leaf in (xz, weight, bias):
        leaf.requires_grad_(True)

    def conv_of_xz(xz, weight, bias):
        return cpu.causal_conv1d_cpu(xz[..., :CHANNELS], weight, bias, window=window)

    assert torch.autograd.gradcheck(conv_of_xz, (xz, weight, bias))


def test_dispatch_picks_kernel_or_reference():
    _, x, weight, bias, window = make_inputs(2, 5, 4, True, True, strided=True)
    expected = reference(x, weight, bias, window, True)

    fused = causal_conv1d_channels_last(x, weight, bias, window=window, backend="cpu")
    plain = causal_conv1d_channels_last(x, weight, bias, window=window, backend="reference")

    assert fused.is_contiguous()
    assert not plain.is_contiguous()
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plain, expected)


def test_invalid_shapes_raise():
    _, x, weight, bias, window = make_inputs(2, 5, 4, True, True, strided=False)

    with pytest.raises(ValueError, match="weight must have shape"):
        cpu.causal_conv1d_cpu(x, weight[:3], bias)
    with pytest.raises(ValueError, match="bias must have shape"):
        cpu.causal_conv1d_cpu(x, weight, bias[:3])
    with pytest.raises(ValueError, match="window must have shape"):
        cpu.causal_conv1d_cpu(x, weight, bias, window=window[:1])
    with pytest.raises(ValueError, match="x must be"):
        cpu.causal_conv1d_cpu(x[0], weight, bias)


def _torch_step(x, window, weight, bias, activation):
    """The torch ops of ``causal_conv1d_step``, on a copy of the window."""
    window = window.clone()
    window.copy_(torch.roll(window, shifts=-1, dims=2))
    window[:, :, -1] = x
    out = torch.einsum("bdk,dk->bd", window, weight)
    if bias is not None:
        out = out + bias
    return (torch.nn.functional.silu(out) if activation else out), window


@pytest.mark.parametrize(
    "width, batch, with_bias, activation, dtype",
    [(4, 3, True, True, torch.float32), (2, 1, False, True, torch.float32),
     (3, 2, True, False, torch.float64), (1, 2, True, True, torch.float32)],
)
def test_step_kernel_matches_torch_ops(width, batch, with_bias, activation, dtype):
    _, x_seq, weight, bias, window = make_inputs(batch, 1, width, with_bias, True, strided=True, dtype=dtype)
    x = x_seq[:, 0]  # (b, d), a view with row stride 2d
    expected, expected_window = _torch_step(x, window, weight, bias, activation)
    out = cpu.causal_conv1d_step_cpu(x, window, weight, bias, activation=activation)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(window, expected_window, rtol=0, atol=0)


def test_steps_continue_a_sequence():
    _, x, weight, bias, _ = make_inputs(2, 9, 4, True, False, strided=False)
    window = torch.zeros(2, CHANNELS, 4)
    with torch.no_grad():
        stepped = torch.stack([cpu.causal_conv1d_step_cpu(x[:, t], window, weight, bias) for t in range(9)], 1)
    expected = causal_conv1d(x.transpose(1, 2), weight, bias).transpose(1, 2)
    torch.testing.assert_close(stepped, expected)


def test_step_kernel_declines_what_it_does_not_cover():
    _, x_seq, weight, bias, window = make_inputs(2, 1, 4, True, True, strided=False)
    x = x_seq[:, 0]
    before = window.clone()
    assert cpu.causal_conv1d_step_cpu(x.bfloat16(), window, weight, bias) is None
    assert cpu.causal_conv1d_step_cpu(x, window.transpose(1, 2).contiguous().transpose(1, 2), weight, bias) is None
    trainable = weight.clone().requires_grad_()
    assert cpu.causal_conv1d_step_cpu(x, window, trainable, bias) is None
    torch.testing.assert_close(window, before, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"x must be \(2, 5\) and weight \(5, 4\)"):
        cpu.causal_conv1d_step_cpu(x[:, :3], window, weight, bias)
