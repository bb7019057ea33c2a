"""Fused CPU kernels (numba) for the mixer's causal depthwise convolution and its backward pass.

Shape letters used in this module:

    b   batch
    l   sequence length
    d   channels (the mixer's ``d_inner``)
    k   filter width (``d_conv``)

Output t of channel c is ``bias[c] + sum_j weight[c, j] * x[t - (k - 1) + j, c]``, optionally
passed through SiLU. Inputs before the start of the sequence come from a window of earlier raw
inputs (the generation cache) or are zero.

The kernels read ``x`` in the (b, l, d) layout that ``in_proj`` produces and write a contiguous
(b, l, d) output, which is the layout the selective scan reads. torch's ``conv1d`` needs (b, d, l),
so the mixer used to pay for two transposes, a copy before the scan and a separate SiLU pass
around a depthwise convolution that mkldnn runs slowly. Here each task takes one batch row and a
block of neighbouring channels, walks the sequence once, and the innermost loops run over the
channels of the block, so they vectorize.

The backward pass recomputes the pre-activation from ``x`` instead of storing it: k multiply-adds
per value, which saves a (b, l, d) tensor of memory between the passes.

fp32 inputs run in fp32 with the vectorizable sigmoid of ``selective_scan_cpu``. fp64 inputs run
in fp64 with ``math.exp``, so ``torch.autograd.gradcheck`` works. fp16 and bf16 inputs run in fp32.
"""

from __future__ import annotations

import logging

import numba
import numpy as np
import torch
from numba import prange

from mambakit.ops.causal_conv import causal_conv1d
from mambakit.ops.kernel_probe import KernelProbe
from mambakit.ops.selective_scan_cpu import (
    _JIT,
    _as_array,
    _check_cpu,
    _compute_dtype,
    _sigmoid,
    _task_block,
    _threads_for,
)
from mambakit.ops.selective_scan_cpu import (
    DISABLE_ENV_VAR as DISABLE_ENV_VAR,
)

logger = logging.getLogger(__name__)

# The helper called inside the parallel loops has no loop of its own to parallelize.
_SERIAL_JIT = {**_JIT, "parallel": False}

# Channels per task. 64 fp32 values are one 256-byte run of each input row. At d_inner 1536 and
# batch 1 this still gives 24 tasks to balance over the threads.
CHANNEL_BLOCK = 64


# --- kernels ----------------------------------------------------------------------------------


@numba.njit(**_SERIAL_JIT)
def _preactivation_row(x, history, weight_t, bias, b, t, d0, d1, acc):
    """Write the pre-activation of step ``t`` for channels [d0, d1) of batch row ``b`` into ``acc``.

    x: (b, l, row width >= d). history: (b, k - 1, d), the inputs before step 0.
    weight_t: (k, d), the transposed filters. bias: (d,).
    """
    width = d1 - d0
    taps = weight_t.shape[0]
    bias_block = bias[d0:d1]
    for c in range(width):
        acc[c] = bias_block[c]
    for j in range(taps):
        source = t - (taps - 1) + j
        w_row = weight_t[j, d0:d1]
        # Steps before the start of the sequence read the history. Only the first k - 1 outputs
        # take this branch, and it is uniform over the channel loop.
        if source >= 0:
            x_row = x[b, source, d0:d1]
        else:
            x_row = history[b, taps - 1 + source, d0:d1]
        for c in range(width):
            acc[c] += w_row[c] * x_row[c]


@numba.njit(**_JIT)
def _conv_forward_kernel(x, history, weight_t, bias, activation, block, out):
    """Write the convolution of ``x`` into ``out`` (b, l, d), with SiLU if ``activation``.

    x: (b, l, row width >= d), of which channels [0, d) are read. history: (b, k - 1, d).
    weight_t: (k, d). bias: (d,).
    """
    batch, length, d_inner = out.shape
    n_blocks = (d_inner + block - 1) // block

    for task in prange(batch * n_blocks):
        b, d0, d1 = _task_block(task, n_blocks, block, d_inner)
        width = d1 - d0
        acc = np.empty(width, dtype=out.dtype)

        for t in range(length):
            _preactivation_row(x, history, weight_t, bias, b, t, d0, d1, acc)
            out_row = out[b, t, d0:d1]
            if activation:
                for c in range(width):
                    value = acc[c]
                    out_row[c] = value * _sigmoid(value)
            else:
                for c in range(width):
                    out_row[c] = acc[c]


@numba.njit(**_JIT)
def _conv_backward_kernel(x, history, weight_t, bias, activation, block, grad_out, grad_x, grad_weight_parts, grad_bias_parts):
    """Write the gradients of the convolution.

    Inputs are those of ``_conv_forward_kernel``; grad_out: (b, l, d).
    Writes grad_x: (b, l, d), and partial sums over the length that the caller adds up over b:
    grad_weight_parts: (b, k, d) and grad_bias_parts: (b, d). Each task owns one batch row and one
    channel block of the parts, so no two threads write the same place.
    """
    batch, length, d_inner = grad_x.shape
    taps = weight_t.shape[0]
    n_blocks = (d_inner + block - 1) // block

    for task in prange(batch * n_blocks):
        b, d0, d1 = _task_block(task, n_blocks, block, d_inner)
        width = d1 - d0
        acc = np.empty(width, dtype=grad_x.dtype)
        grad_weight_acc = np.zeros((taps, width), dtype=grad_x.dtype)
        grad_bias_acc = np.zeros(width, dtype=grad_x.dtype)
        # Gradients of the pre-activation of the last k steps, at slot (step % k). Input s feeds
        # outputs s .. s + k - 1, so its gradient is complete once step s + k - 1 is done.
        ring = np.zeros((taps, width), dtype=grad_x.dtype)
        # A one of the array dtype: a 1.0 literal would turn fp32 arithmetic into fp64.
        one = np.ones(1, dtype=grad_x.dtype)[0]

        for t in range(length + taps - 1):
            slot = ring[t % taps]
            if t < length:
                _preactivation_row(x, history, weight_t, bias, b, t, d0, d1, acc)
                grad_row = grad_out[b, t, d0:d1]
                if activation:
                    for c in range(width):
                        # d/da of a * sigmoid(a) is s * (1 + a * (1 - s)).
                        s = _sigmoid(acc[c])
                        slot[c] = grad_row[c] * s * (one + acc[c] * (one - s))
                else:
                    for c in range(width):
                        slot[c] = grad_row[c]
                for c in range(width):
                    grad_bias_acc[c] += slot[c]
                for j in range(taps):
                    source = t - (taps - 1) + j
                    if source >= 0:
                        x_row = x[b, source, d0:d1]
                    else:
                        x_row = history[b, taps - 1 + source, d0:d1]
                    for c in range(width):
                        grad_weight_acc[j, c] += slot[c] * x_row[c]
            else:
                # Past the end the outputs do not exist, so their gradients are zero.
                for c in range(width):
                    slot[c] = 0.0

            s_done = t - (taps - 1)
            if s_done >= 0:
                grad_x_row = grad_x[b, s_done, d0:d1]
                for c in range(width):
                    acc[c] = 0.0
                for j in range(taps):
                    # Output t - j read input s_done = t - (k - 1) through tap j.
                    w_row = weight_t[j, d0:d1]
                    g_row = ring[(t - j) % taps]
                    for c in range(width):
                        acc[c] += w_row[c] * g_row[c]
                for c in range(width):
                    grad_x_row[c] = acc[c]

        for j in range(taps):
            for c in range(width):
                grad_weight_parts[b, j, d0 + c] = grad_weight_acc[j, c]
        for c in range(width):
            grad_bias_parts[b, d0 + c] = grad_bias_acc[c]


@numba.njit(**_JIT)
def _conv_step_kernel(x, window, weight, bias, activation, block, out):
    """Shift ``x`` (b, d) into ``window`` (b, d, k) in place and write the new output to ``out`` (b, d).

    weight: (d, k). bias: (d,). Each task takes one batch row and ``block`` channels. The window
    row of a channel is k contiguous values, so the shift and the dot product touch one short
    run of memory.
    """
    batch, d_inner, taps = window.shape
    n_blocks = (d_inner + block - 1) // block
    for task in prange(batch * n_blocks):
        b, d0, d1 = _task_block(task, n_blocks, block, d_inner)
        acc = np.empty(d1 - d0, dtype=out.dtype)
        for d in range(d0, d1):
            row = window[b, d]
            w_row = weight[d]
            total = bias[d]
            for j in range(taps - 1):
                value = row[j + 1]
                row[j] = value
                total += w_row[j] * value
            value = x[b, d]
            row[taps - 1] = value
            acc[d - d0] = total + w_row[taps - 1] * value
        out_row = out[b, d0:d1]
        if activation:
            for c in range(d1 - d0):
                out_row[c] = acc[c] * _sigmoid(acc[c])
        else:
            for c in range(d1 - d0):
                out_row[c] = acc[c]


# --- torch glue -------------------------------------------------------------------------------


def _rows_array(x: torch.Tensor) -> np.ndarray:
    """Return a C-contiguous (b, l, row width) array whose first d columns are ``x`` (b, l, d).

    The x half of ``in_proj``'s output is a view with row stride 2d. numba compiles code for
    C-contiguous arrays that vectorizes, while for strided ones it must assume any element stride.
    Widening the rows to the full stride gives a C-contiguous array over the same memory with no
    copy. Other layouts are copied once.
    """
    x = x.detach()
    if x.is_contiguous():
        return x.numpy()
    batch, length, channels = x.shape
    row_stride = x.stride(1)
    uniform_rows = length > 1 and x.stride(2) == 1 and row_stride >= channels
    uniform_batch = batch == 1 or x.stride(0) == length * row_stride
    if uniform_rows and uniform_batch:
        # The widened last row may run past the end of x into other data, which must exist.
        last_element = x.storage_offset() + (batch - 1) * length * row_stride + length * row_stride
        if last_element * x.element_size() <= x.untyped_storage().nbytes():
            wide = x.as_strided((batch, length, row_stride), (length * row_stride, row_stride, 1))
            return wide.numpy()
    return x.contiguous().numpy()


def _history(window: torch.Tensor | None, batch: int, channels: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Return the k - 1 inputs before the sequence as a new (b, k - 1, d) tensor.

    A copy, so that the backward pass still reads these values after the caller shifts new inputs
    into ``window`` in place.
    """
    history = torch.zeros(batch, width - 1, channels, dtype=dtype)
    if window is not None:
        history.copy_(window.detach()[:, :, 1:].transpose(1, 2))
    return history


class _CausalConvFunction(torch.autograd.Function):
    """Autograd wrapper around the kernels; weight, bias and history have the compute dtype.

    ``x`` has the compute dtype too but may be a strided view. The window is a cache and gets no
    gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, history, activation):
        batch, length, channels = x.shape
        # A copy even when the transpose is contiguous (d or k is 1), never a view of the parameter.
        weight_t = weight.detach().t().clone(memory_format=torch.contiguous_format)
        out = torch.empty(batch, length, channels, dtype=x.dtype)
        x_rows = _rows_array(x)

        with _threads_for(batch * length * channels * weight.shape[1]):
            _conv_forward_kernel(
                x_rows, history.numpy(), weight_t.numpy(), _as_array(bias), activation, CHANNEL_BLOCK, out.numpy()
            )

        ctx.activation = activation
        ctx.save_for_backward(x, weight_t, bias, history)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight_t, bias, history = ctx.saved_tensors
        batch, length, channels = x.shape
        width = weight_t.shape[0]
        grad_x = torch.empty(batch, length, channels, dtype=x.dtype)
        grad_weight_parts = torch.empty(batch, width, channels, dtype=x.dtype)
        grad_bias_parts = torch.empty(batch, channels, dtype=x.dtype)

        with _threads_for(batch * length * channels * width):
            _conv_backward_kernel(
                _rows_array(x), history.numpy(), weight_t.numpy(), _as_array(bias), ctx.activation, CHANNEL_BLOCK,
                _as_array(grad_out.to(x.dtype)), grad_x.numpy(), grad_weight_parts.numpy(), grad_bias_parts.numpy(),
            )  # fmt: skip

        needs = ctx.needs_input_grad
        return (
            grad_x if needs[0] else None,
            grad_weight_parts.sum(0).t() if needs[1] else None,
            grad_bias_parts.sum(0) if needs[2] else None,
            None,
            None,
        )


def causal_conv1d_cpu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    activation: bool = True,
) -> torch.Tensor:
    """Convolve ``x`` causally per channel with the fused numba kernels, in the (b, l, d) layout.

    Args:
        x: (b, l, d) inputs. A view whose rows have a larger stride, such as one half of a
            (b, l, 2d) tensor, is read in place.
        weight: (d, k) filters.
        bias: (d,) or None.
        window: (b, d, k) the last k raw inputs before ``x`` (a generation cache), or None for
            zeros. Read only; no gradient flows into it.
        activation: apply SiLU to the output.

    Returns:
        (b, l, d) contiguous outputs with the dtype of ``x``, differentiable in x, weight and bias.
    """
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, length, channels), got shape {tuple(x.shape)}")
    batch, _, channels = x.shape
    if weight.dim() != 2 or weight.shape[0] != channels:
        raise ValueError(f"weight must have shape ({channels}, width) to match x, got {tuple(weight.shape)}")
    width = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"bias must have shape ({channels},) to match x, got {tuple(bias.shape)}")
    if window is not None and tuple(window.shape) != (batch, channels, width):
        raise ValueError(f"window must have shape {(batch, channels, width)} to match x and weight, got {tuple(window.shape)}")
    _check_cpu(x=x, weight=weight, bias=bias, window=window)

    dtype = _compute_dtype(x)
    # Casts outside the autograd Function, so autograd maps the gradients back to the caller's
    # dtypes. The bias is always a fresh tensor: numpy views of a parameter's storage would stop
    # FSDP from freeing it by resizing.
    bias_filled = bias.to(dtype).clone() if bias is not None else torch.zeros(channels, dtype=dtype)
    history = _history(window, batch, channels, width, dtype)
    out = _CausalConvFunction.apply(x.to(dtype), weight.to(dtype), bias_filled, history, bool(activation))
    return out.to(x.dtype)


def causal_conv1d_step_cpu(
    x: torch.Tensor,
    window: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: bool = True,
) -> torch.Tensor | None:
    """Advance the convolution by one input with the numba kernel, updating ``window`` in place.

    Args and returns are those of ``causal_conv.causal_conv1d_step``: x (b, d), window (b, d, k),
    weight (d, k), bias (d,) or None. Not differentiable.

    Returns None, leaving ``window`` untouched, when the kernel does not cover the inputs: any of
    them off the CPU, a dtype other than fp32 or fp64 or not the same for all, a non-contiguous
    window, or autograd asked for. The caller then runs the torch version.
    """
    tensors = (x, window, weight) + ((bias,) if bias is not None else ())
    dtype = window.dtype
    if (
        dtype not in (torch.float32, torch.float64)
        or any(t.device.type != "cpu" or t.dtype != dtype for t in tensors)
        or not window.is_contiguous()
        or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
    ):
        return None
    batch, channels, width = window.shape
    if x.shape != (batch, channels) or weight.shape != (channels, width):
        raise ValueError(
            f"x must be ({batch}, {channels}) and weight ({channels}, {width}) to match the window "
            f"{tuple(window.shape)}, got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    # Copies of the parameters, not views: a numpy view would pin the storage that FSDP frees.
    bias_filled = bias.detach().clone() if bias is not None else torch.zeros(channels, dtype=dtype)
    out = torch.empty(batch, channels, dtype=dtype)
    with _threads_for(batch * channels * width):
        _conv_step_kernel(
            x.detach().numpy(), window.detach().numpy(), weight.detach().numpy().copy(), bias_filled.numpy(),
            bool(activation), CHANNEL_BLOCK, out.numpy(),
        )  # fmt: skip
    return out


# --- availability -----------------------------------------------------------------------------

def available() -> bool:
    """Return whether the kernels can run here, compiling (or loading from cache) a tiny convolution once.

    Setting ``MAMBAKIT_DISABLE_NUMBA=1`` makes this return False, to force the reference.
    """
    return _PROBE.available()


def unavailable_reason() -> str | None:
    """Return why ``available()`` is False, or None when it is True or was never called."""
    return _PROBE.unavailable_reason()


def _run_probe() -> None:
    """Run the fp32 forward kernel on a tiny input and compare it with the reference.

    NOTE: the backward kernel and the fp64 versions compile on their first call, outside this probe.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 5, 3, generator=generator)
    weight = torch.randn(3, 4, generator=generator)
    bias = torch.randn(3, generator=generator)
    with torch.no_grad():
        out = causal_conv1d_cpu(x, weight, bias)
        expected = causal_conv1d(x.transpose(1, 2), weight, bias).transpose(1, 2)
    if not torch.allclose(out, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"probe convolution returned {out.flatten().tolist()}, expected {expected.flatten().tolist()}")


_PROBE = KernelProbe("convolution", _run_probe)
