"""Time the selective scan implementations on CPU, forward and forward + backward, in one process.

Shape letters: b batch, l sequence length, d channels (``d_inner``), n state size (``d_state``).

Implementations, by the names that ``--only`` and the output use, all given the same fp32 inputs
with D, z, delta_bias and softplus:

* ``cpu``: mambakit's fused numba kernels, ``selective_scan_cpu``.
* ``reference``: mambakit's ``selective_scan_reference``, one PyTorch step per token.
* ``transformers``: the PyTorch scan of transformers' Mamba model,
  ``transformers.models.mamba.modeling_mamba.mamba_selective_scan`` (transformers 5.x; older
  releases have no such function and are skipped). It takes channels-first (b, d, l) tensors,
  which it gets as transposed views of the same inputs, and builds the (b, d, l, n) discretized
  tensors before its loop over time. This times the scan alone, not the whole mixer layer, so
  that the projections and the convolution do not hide the differences.
* ``mambapy``: ``mambapy.pscan.pscan``, a parallel (Blelloch) scan over (b, l, d, n) tensors,
  with the discretization, the C contraction, the D skip and the gate around it written here.

Usage:

    python benchmarks/bench_scan.py [--batch 1 --length 2048 --d-inner 1536 --d-state 16]
                                    [--repeats 5] [--json out.json]

Prints a markdown table and the JSON record. Each measurement starts with a warm-up run. Times are
medians over up to ``--repeats`` further runs, which stop early once they have taken ``--budget``
seconds. A warm-up run longer than the budget is the only run, so the slowest implementations are
timed once, first call included. The numba kernels are compiled, or loaded from numba's cache,
before any timing.

"peak MiB" is the growth of the process's peak resident memory (VmHWM) during the warm-up run. The
script returns freed heap memory to the system (glibc ``malloc_trim``) and resets the peak through
/proc/self/clear_refs before that run. It is Linux-only and an estimate, because it counts pages
touched, not bytes allocated.

transformers is timed forward only unless ``--skip-backward`` is given without names, because its
backward pass grows faster than linearly with the length. On a shared 2-core AMD EPYC, one forward +
backward run with d_inner 64 took 0.56 s at length 256 and 3.5 s at length 512. At the default
shape a single run would take many minutes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import platform
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from mambakit.ops.selective_scan import selective_scan_reference

IMPLEMENTATION_NAMES = ("cpu", "reference", "transformers", "mambapy")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="batch size b")
    parser.add_argument("--length", type=int, default=2048, help="sequence length l, in tokens")
    parser.add_argument("--d-inner", type=int, default=1536, help="channels d of the scan")
    parser.add_argument("--d-state", type=int, default=16, help="state size n per channel")

    parser.add_argument("--repeats", type=int, default=5, help="max timed runs per measurement; the median is reported")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds after which a measurement takes no further runs; a longer warm-up run is the only run",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")

    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"run only these implementations: {', '.join(IMPLEMENTATION_NAMES)}",
    )
    parser.add_argument("--no-backward", action="store_true", help="time the forward pass only")
    parser.add_argument(
        "--skip-backward",
        nargs="*",
        default=["transformers"],
        metavar="NAME",
        help="implementations timed forward only (default: transformers; pass no names to time all)",
    )

    parser.add_argument(
        "--threads",
        type=int,
        help="threads for torch and numba (default: their own defaults, usually one per core)",
    )
    parser.add_argument("--json", type=Path, help="also write the JSON record to this file")
    args = parser.parse_args(argv)

    if args.threads is not None and args.threads < 1:
        parser.error(f"invalid --threads {args.threads}; expected 1 or more")
    for option, names in (("--only", args.only or []), ("--skip-backward", args.skip_backward)):
        unknown = sorted(set(names) - set(IMPLEMENTATION_NAMES))
        if unknown:
            parser.error(f"invalid {option} value(s) {unknown}; expected some of {list(IMPLEMENTATION_NAMES)}")
    return args


def make_inputs(batch: int, length: int, d_inner: int, d_state: int, seed: int) -> dict[str, torch.Tensor]:
    """Return random fp32 scan inputs, keyed by the argument names of the scan.

    After the bias and the softplus the step sizes lie near 0.002 to 0.007, inside the range that
    transformers' MambaConfig initializes them to (time_step_min 0.001 to time_step_max 0.1).
    """
    generator = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, length, d_inner, generator=generator),
        delta=torch.randn(batch, length, d_inner, generator=generator) * 0.5 - 2.0,
        # A = -exp(A_log) with Mamba's initialization A_log = log(1 .. n).
        A=-torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1),
        B=torch.randn(batch, length, d_state, generator=generator),
        C=torch.randn(batch, length, d_state, generator=generator),
        D=torch.ones(d_inner),
        z=torch.randn(batch, length, d_inner, generator=generator),
        delta_bias=torch.rand(d_inner, generator=generator) - 4.0,
    )


# --- implementations: each maps the inputs of ``make_inputs`` to y (b, l, d) -------------------


def run_mambakit_cpu(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    from mambakit.ops.selective_scan_cpu import selective_scan_cpu

    return selective_scan_cpu(**inputs, delta_softplus=True)


def run_mambakit_reference(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return selective_scan_reference(**inputs, delta_softplus=True)


def load_transformers_scan() -> Callable:
    from transformers.models.mamba import modeling_mamba

    scan = getattr(modeling_mamba, "mamba_selective_scan", None)
    if scan is None:
        raise ImportError("this transformers release has no modeling_mamba.mamba_selective_scan")

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        y = scan(
            inputs["u"].transpose(1, 2),
            inputs["delta"].transpose(1, 2),
            inputs["A"],
            inputs["B"].transpose(1, 2),
            inputs["C"].transpose(1, 2),
            D=inputs["D"],
            z=inputs["z"].transpose(1, 2),
            delta_bias=inputs["delta_bias"],
            delta_softplus=True,
        )
        return y.transpose(1, 2)

    return run


def load_mambapy_scan() -> Callable:
    from mambapy.pscan import pscan

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        dt = F.softplus(inputs["delta"] + inputs["delta_bias"])  # (b, l, d)
        decay = torch.exp(dt.unsqueeze(-1) * inputs["A"])  # (b, l, d, n)
        drive = (dt * inputs["u"]).unsqueeze(-1) * inputs["B"].unsqueeze(2)  # (b, l, d, n)
        states = pscan(decay, drive)  # (b, l, d, n)
        y = (states @ inputs["C"].unsqueeze(-1)).squeeze(-1)  # (b, l, d)
        y = y + inputs["u"] * inputs["D"]
        return y * F.silu(inputs["z"])

    return run


def available_implementations(only: list[str] | None) -> tuple[dict[str, Callable], dict[str, str]]:
    """Return the runnable implementations by name, and the reason each skipped one was skipped."""
    loaders = {
        "cpu": lambda: run_mambakit_cpu,
        "reference": lambda: run_mambakit_reference,
        "transformers": load_transformers_scan,
        "mambapy": load_mambapy_scan,
    }
    implementations, skipped = {}, {}
    for name, load in loaders.items():
        if only and name not in only:
            continue
        try:
            implementations[name] = load()
        except ImportError as error:
            skipped[name] = str(error)
    if "cpu" in implementations:
        from mambakit.ops import selective_scan_cpu

        if selective_scan_cpu.available():
            warm_up_cpu_kernels()
        else:
            skipped["cpu"] = selective_scan_cpu.unavailable_reason() or "numba kernels unavailable"
            del implementations["cpu"]
    return implementations, skipped


def warm_up_cpu_kernels() -> None:
    """Compile, or load from numba's cache, the fp32 forward and backward kernels."""
    inputs = {name: tensor.requires_grad_(True) for name, tensor in make_inputs(1, 4, 4, 2, seed=0).items()}
    y = run_mambakit_cpu(inputs)
    y.sum().backward()


# --- measurement ------------------------------------------------------------------------------


def reset_peak_memory() -> int | None:
    """Release freed heap memory, reset the peak RSS to the current RSS and return it in bytes.

    Returns None where /proc/self/clear_refs is missing (not Linux).
    """
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass  # not glibc: the peak then misses memory that the allocator reuses
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return read_status_kib("VmRSS") * 1024
    except OSError:
        return None


def read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not found in /proc/self/status")


def peak_growth_mib(baseline: int | None) -> float | None:
    if baseline is None:
        return None
    try:
        return max(0.0, (read_status_kib("VmHWM") * 1024 - baseline) / 2**20)
    except OSError:
        return None


def time_runs(function: Callable[[], object], repeats: int, budget: float) -> dict[str, object]:
    """Time ``function`` as the module docstring describes; return the median ms, run count and peak MiB."""
    baseline = reset_peak_memory()
    start = time.perf_counter()
    function()
    warm_up = time.perf_counter() - start
    peak = peak_growth_mib(baseline)

    seconds = []
    if warm_up > budget:
        seconds.append(warm_up)
    while len(seconds) < repeats and sum(seconds) <= budget:
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return {"ms": statistics.median(seconds) * 1e3, "runs": len(seconds), "peak_mib": peak}


def forward_only(run: Callable, inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    def step():
        with torch.no_grad():
            return run(inputs)

    return step


def forward_backward(run: Callable, inputs: dict[str, torch.Tensor], grad_y: torch.Tensor) -> Callable[[], None]:
    leaves = {name: tensor.detach().clone().requires_grad_(True) for name, tensor in inputs.items()}

    def step():
        y = run(leaves)
        torch.autograd.grad(y, list(leaves.values()), grad_y)

    return step


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        info["numba"] = None
    for package in ("transformers", "mambapy"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    return info


def format_number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: dict[str, dict[str, object]]) -> str:
    """Return the results as a markdown table.

    "x cpu" is the implementation's time divided by the cpu kernel's, so 10 means the cpu kernel
    is 10 times faster. "runs" counts the timed runs behind each median.
    """
    lines = [
        "| implementation | forward ms | x cpu | runs | peak MiB | fwd+bwd ms | x cpu | runs | peak MiB | max abs diff of y |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.items():
        cells = [name]
        for pass_name in ("forward", "forward_backward"):
            timing = row.get(pass_name) or {}
            cells += [
                format_number(timing.get("ms")),
                format_number(timing.get("ratio_to_cpu"), 2),
                str(timing.get("runs", "-")),
                format_number(timing.get("peak_mib"), 0),
            ]
        cells.append(f"{row['max_abs_diff_y']:.2e}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(threads)
    except ImportError:
        pass


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        set_threads(args.threads)
    inputs = make_inputs(args.batch, args.length, args.d_inner, args.d_state, args.seed)
    implementations, skipped = available_implementations(args.only)
    if not implementations:
        print(f"no implementation can run: {skipped}", file=sys.stderr)
        return 1

    with torch.no_grad():
        baseline_name = "cpu" if "cpu" in implementations else next(iter(implementations))
        y_baseline = implementations[baseline_name](inputs)
    grad_y = torch.randn(y_baseline.shape, generator=torch.Generator().manual_seed(args.seed + 1))

    results: dict[str, dict[str, object]] = {}
    for name, run in implementations.items():
        print(f"timing {name} ...", file=sys.stderr, flush=True)
        with torch.no_grad():
            y = run(inputs)
        row: dict[str, object] = {
            "max_abs_diff_y": (y.double() - y_baseline.double()).abs().max().item(),
            "forward": time_runs(forward_only(run, inputs), args.repeats, args.budget),
        }
        del y
        if not args.no_backward and name not in args.skip_backward:
            row["forward_backward"] = time_runs(forward_backward(run, inputs, grad_y), args.repeats, args.budget)
        results[name] = row

    if "cpu" in results:
        for row in results.values():
            for pass_name in ("forward", "forward_backward"):
                if pass_name in row:
                    row[pass_name]["ratio_to_cpu"] = row[pass_name]["ms"] / results["cpu"][pass_name]["ms"]

    record = {
        "shape": dict(batch=args.batch, length=args.length, d_inner=args.d_inner, d_state=args.d_state),
        "dtype": "float32",
        "max_repeats": args.repeats,
        "budget_seconds": args.budget,
        "environment": environment(),
        "results": results,
        "skipped": skipped,
        "max_abs_diff_y_against": baseline_name,
    }
    env = record["environment"]
    print(
        f"CPU: {env['cpu_model']}; torch {env['torch']} ({env['torch_threads']} threads); "
        f"numba {env.get('numba')} ({env.get('numba_threads')} threads)"
    )
    print(
        f"shape: b={args.batch} l={args.length} d={args.d_inner} n={args.d_state}, fp32; "
        f"medians of up to {args.repeats} runs, {args.budget:g} s budget per measurement; "
        f"x cpu = time / time of the cpu kernel; y compared with {baseline_name}"
    )
    print()
    print(markdown_table(results))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    print()
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
