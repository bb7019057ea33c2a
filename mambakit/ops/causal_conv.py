"""Causal depthwise 1-D convolution, for whole sequences and for one step at a time.

Shape letters: b batch, d channels, l length, k kernel width (``d_conv``).

``causal_conv1d`` takes the (b, d, l) layout of ``torch.nn.functional.conv1d``.
``causal_conv1d_channels_last`` takes and returns the (b, l, d) layout of the mixer and, on CPU,
runs fused numba kernels that need no transposes (see ``causal_conv_cpu``).

The mixer convolves each channel with its own width-k filter over the current and the k-1
previous inputs. During generation the last k inputs are kept as a window, so one new token
costs O(d * k) whatever the length of the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mambakit.ops.selective_scan import resolve_backend


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    activation: bool = True,
) -> torch.Tensor:
    """Convolve ``x`` causally per channel, optionally continuing from a window of past inputs.

    Args:
        x: (b, d, l) inputs.
        weight: (d, k) filters.
        bias: (d,) or None.
        window: (b, d, k) the last k raw inputs before ``x`` (a generation cache), or None for
            zeros, which is the causal padding of a sequence that starts here.
        activation: apply SiLU to the output.

    Returns:
        (b, d, l) outputs.
    """
    width = weight.shape[1]
    if window is None:
        padded = F.pad(x, (width - 1, 0))
    else:
        padded = torch.cat([window[:, :, 1:].to(x.dtype), x], dim=2)
    out = F.conv1d(padded, weight.unsqueeze(1), bias, groups=weight.shape[0])
    return F.silu(out) if activation else out


def causal_conv1d_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    window: torch.Tensor | None = None,
    activation: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Convolve ``x`` causally per channel in the (b, l, d) layout, on the kernels ``backend`` picks.

    Args:
        x: (b, l, d) inputs; may be a view with a larger row stride.
        weight: (d, k) filters.
        bias: (d,) or None.
        window: (b, d, k) the last k raw inputs before ``x``, or None for zeros. Not updated.
        activation: apply SiLU to the output.
        backend: a selective-scan backend name (see ``mambakit.ops.selective_scan``). When it
            resolves to "cpu", the fused numba kernels run; otherwise ``causal_conv1d`` does.

    Returns:
        (b, l, d) outputs. The numba kernels return a contiguous tensor, the reference a
        transposed view.
    """
    if x.device.type == "cpu" and resolve_backend(backend, x.device) == "cpu":
        from mambakit.ops import causal_conv_cpu

        if causal_conv_cpu.available():
            return causal_conv_cpu.causal_conv1d_cpu(x, weight, bias, window=window, activation=activation)
    out = causal_conv1d(x.transpose(1, 2), weight, bias, window=window, activation=activation)
    return out.transpose(1, 2)


def update_window(window: torch.Tensor, x: torch.Tensor) -> None:
    """Shift the inputs ``x`` (b, d, l) into the end of ``window`` (b, d, k) in place."""
    width = window.shape[2]
    length = x.shape[2]
    if length >= width:
        window.copy_(x[:, :, -width:])
    else:
        window.copy_(torch.cat([window[:, :, length:], x.to(window.dtype)], dim=2))


def causal_conv1d_step(
    x: torch.Tensor,
    window: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Advance the convolution by one input, updating ``window`` in place.

    Args:
        x: (b, d) the new input.
        window: (b, d, k) the last k inputs; its oldest entry is dropped and ``x`` appended.
        weight: (d, k).  bias: (d,) or None.
        activation: apply SiLU to the output.
        backend: a selective-scan backend name. When it resolves to "cpu", a numba kernel does
            the shift and the dot products in one pass (``causal_conv_cpu.causal_conv1d_step_cpu``),
            and when it resolves to "triton", a Triton kernel does. Otherwise, or for inputs the
            numba kernel does not cover, the torch ops below run.

    Returns:
        (b, d) output for this step.
    """
    resolved = resolve_backend(backend, x.device)
    if resolved == "cpu":
        from mambakit.ops import causal_conv_cpu

        if causal_conv_cpu.available():
            out = causal_conv_cpu.causal_conv1d_step_cpu(x, window, weight, bias, activation=activation)
            if out is not None:
                return out
    elif resolved == "triton":
        from mambakit.ops.selective_scan_triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(x, window, weight, bias, activation=activation)
    window.copy_(torch.roll(window, shifts=-1, dims=2))
    window[:, :, -1] = x
    out = torch.einsum("bdk,dk->bd", window, weight)
    if bias is not None:
        out = out + bias
    return F.silu(out) if activation else out
