"""Draw the figures of the concept pages into docs/concepts/img/.

Run from the repository root with matplotlib installed (``pip install -e .[plot]``):

    python docs/concepts/make_plots.py

Every figure is computed with mambakit.ssm and fixed seeds, so reruns give the same curves.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # Render to files only, so no display is needed.
import matplotlib.pyplot as plt
import numpy as np
import torch

from mambakit.ssm import (
    ContinuousSSM,
    S4DLayer,
    discretize_dense,
    legs_online_coefficients,
    legs_reconstruct,
    step_response_error,
    zoh_simplification_error,
)

IMAGE_DIR = Path(__file__).resolve().parent / "img"
# Low resolution and few colors keep every PNG well under 150 KB.
DPI = 80


def damped_oscillator() -> ContinuousSSM:
    """x'' + 0.4 x' + 4 x = 4 u as a two-state system: natural frequency 2, damping ratio 0.1."""
    A = torch.tensor([[0.0, 1.0], [-4.0, -0.4]], dtype=torch.float64)
    return ContinuousSSM.single_input(
        A,
        torch.tensor([0.0, 4.0], dtype=torch.float64),
        torch.tensor([1.0, 0.0], dtype=torch.float64),
    )


def plot_ssm_responses(path: Path) -> None:
    system = damped_oscillator()
    times = torch.linspace(0, 12, 600, dtype=torch.float64)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].plot(times, system.impulse_response(times)[:, 0, 0])
    axes[0].set_title("impulse response  C exp(At) B")
    axes[1].plot(times, system.step_response(times)[:, 0, 0])
    axes[1].axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    axes[1].set_title("step response  C A⁻¹(exp(At) − I) B + D")
    for axis in axes:
        axis.set_xlabel("t")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_discretization(path: Path) -> None:
    system = damped_oscillator()
    delta = 0.3
    steps = 40
    times = delta * torch.arange(1, steps + 1, dtype=torch.float64)
    fine_times = torch.linspace(0, delta * steps, 600, dtype=torch.float64)

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(
        fine_times, system.step_response(fine_times)[:, 0, 0], color="black", label="exact"
    )
    for method, marker in [("zoh", "o"), ("bilinear", "s"), ("euler", "^")]:
        A_bar, B_bar = discretize_dense(system.A, system.B, delta, method)
        state = torch.zeros(2, 1, dtype=torch.float64)
        outputs = []
        for _ in range(steps):
            state = A_bar @ state + B_bar
            outputs.append((system.C @ state + system.D).item())
        axes[0].plot(times, outputs, marker=marker, markersize=3, linestyle="none", label=method)
    # Forward Euler is unstable here (|1 + ΔA| > 1 for A's eigenvalues -0.2 ± 2i), so its
    # growing oscillation is cut off to keep the other curves readable.
    axes[0].set_ylim(-1.0, 3.0)
    axes[0].set_title(f"step response, Δ = {delta} (Euler diverges)")
    axes[0].set_xlabel("t")
    axes[0].legend(fontsize=8)

    deltas = np.geomspace(0.005, 0.2, 7)
    simplification = zoh_simplification_error(system, deltas, duration=6.0)
    axes[1].loglog(
        deltas, simplification.step_error_simplified, "o-", label="ZOH with B_bar = ΔB (Mamba)"
    )
    axes[1].loglog(
        deltas, simplification.b_bar_relative_error, "o--", label="B_bar relative error, ΔB vs ZOH"
    )
    for method in ["bilinear", "euler"]:
        errors = [step_response_error(system, d, method, duration=6.0) for d in deltas]
        axes[1].loglog(deltas, errors, "s-", label=method)
    axes[1].loglog(deltas, simplification.step_error_zoh, "x-", label="exact ZOH (rounding only)")
    axes[1].set_title("relative error against exact ZOH and exact s(t)")
    axes[1].set_xlabel("Δ")
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_hippo(path: Path) -> None:
    length = 1000
    positions = (np.arange(1, length + 1) - 0.5) / length
    signal = np.sin(20 * positions) + 0.5 * np.cos(40 * positions**2)
    sizes = [8, 16, 32, 64]

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(positions, signal, color="black", linewidth=2, label="input")
    errors = {"bilinear": [], "log_zoh": []}
    for N in sizes:
        for method, method_errors in errors.items():
            coefficients = legs_online_coefficients(torch.tensor(signal), N, method=method)[-1]
            reconstruction = legs_reconstruct(coefficients, positions).numpy()
            method_errors.append(np.sqrt(np.mean((reconstruction - signal) ** 2)))
            if method == "bilinear" and N <= 32:
                axes[0].plot(positions, reconstruction, linewidth=1, label=f"N = {N}")
    axes[0].set_title(f"HiPPO-LegS reconstruction after {length} steps (bilinear)")
    axes[0].set_xlabel("s (fraction of the history)")
    axes[0].legend(fontsize=8)
    for method, values in errors.items():
        axes[1].semilogy(sizes, values, "o-", label=method)
    axes[1].set_title("RMS reconstruction error")
    axes[1].set_xlabel("N")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def plot_lti_kernel(path: Path) -> None:
    length = 400
    figure, axis = plt.subplots(figsize=(8, 3.2))
    for init, real in [("s4d-lin", False), ("s4d-inv", False), ("s4d-real", True)]:
        torch.manual_seed(0)
        layer = S4DLayer(1, 32, init=init, real=real)
        with torch.no_grad():
            # One fixed step size and unit C make the three initialisations comparable.
            layer.log_dt.fill_(np.log(0.02))
            layer.C.fill_(1.0)
            if not real:
                layer.C[..., 1] = 0.0
            kernel = layer.kernel(length)[0]
        axis.plot(kernel / kernel.abs().max(), linewidth=1, label=init)
    axis.set_title("S4DLayer convolution kernel K_l, Δ = 0.02, d_state = 32 (scaled to max 1)")
    axis.set_xlabel("lag l")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def main() -> None:
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    plots = {
        "ssm_responses.png": plot_ssm_responses,
        "discretization_step_response.png": plot_discretization,
        "hippo_reconstruction.png": plot_hippo,
        "lti_kernel.png": plot_lti_kernel,
    }
    for name, plot in plots.items():
        path = IMAGE_DIR / name
        plot(path)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
