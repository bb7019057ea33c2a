"""Time the reference scan against the fused CPU kernel, forward + backward, and plot it.

Run from the repository root with matplotlib installed (``pip install -e .[plot]``):

    python docs/concepts/plot_scan.py

Unlike make_plots.py this measures wall-clock time, so reruns give different numbers; the plot
title names the machine's thread count. Shapes: batch 1, d_inner 256, d_state 16.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Render to files only, so no display is needed.
import matplotlib.pyplot as plt
import torch

from mambakit.ops.selective_scan import selective_scan

IMAGE = Path(__file__).resolve().parent / "img" / "scan_time.png"
LENGTHS = [128, 256, 512, 1024, 2048]


def make_inputs(length: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    d_inner, d_state = 256, 16
    tensors = dict(
        u=torch.randn(1, length, d_inner, generator=generator),
        delta=torch.randn(1, length, d_inner, generator=generator) - 2.0,
        A=-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),
        B=torch.randn(1, length, d_state, generator=generator),
        C=torch.randn(1, length, d_state, generator=generator),
        D=torch.ones(d_inner),
        z=torch.randn(1, length, d_inner, generator=generator),
    )
    return {name: tensor.requires_grad_() for name, tensor in tensors.items()}


def time_forward_backward(backend: str, length: int, repeats: int = 3) -> float:
    """Return the median seconds of one forward + backward pass."""
    inputs = make_inputs(length)
    times = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        y = selective_scan(**inputs, delta_softplus=True, backend=backend)
        y.sum().backward()
        if attempt > 0:  # the first run compiles or loads the kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    series = {backend: [time_forward_backward(backend, n) for n in LENGTHS] for backend in ("reference", "cpu")}
    for backend, seconds in series.items():
        print(backend, ", ".join(f"L={n}: {s * 1e3:.1f} ms" for n, s in zip(LENGTHS, seconds)))

    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    labels = {"reference": "reference (one PyTorch step per token)", "cpu": "fused numba kernel"}
    for backend, seconds in series.items():
        axes.loglog(LENGTHS, [s * 1e3 for s in seconds], marker="o", label=labels[backend])
    axes.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
    axes.minorticks_off()
    axes.set_xlabel("sequence length (tokens)")
    axes.set_ylabel("forward + backward (ms)")
    axes.set_title(f"selective scan, d_inner 256, d_state 16, {torch.get_num_threads()} threads", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(IMAGE, dpi=80)
    plt.close(figure)
    print(f"wrote {IMAGE}")


if __name__ == "__main__":
    main()
