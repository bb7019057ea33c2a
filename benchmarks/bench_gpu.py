"""Time the Triton scan, prefill and decode on a CUDA GPU against the PyTorch reference.

Shape letters: b batch, l sequence length, d channels (``d_inner``), n state size (``d_state``).

Models are built with random weights in the shapes of mamba-130m (d_model 768, 24 layers) and
mamba-1.4b (d_model 2048, 48 layers), vocabulary 50280, d_state 16, and cast to ``--dtype``
(A_log, D and the dt bias stay fp32, as in ``Mamba.cast``). Timing does not depend on the values.

Contenders, by the names the output uses:

* ``triton``: mambakit's Triton kernels (``backend="triton"``).
* ``reference``: mambakit's PyTorch reference, one set of tensor ops per time step.
* ``mamba_ssm``: ``selective_scan_fn`` of the mamba_ssm package (``backend="mamba_ssm"``), only
  if it is installed, for the scan and prefill sections. mambakit passes (b, l, d) tensors, so
  its time includes the copies to the (b, d, l) layout that mamba_ssm needs.

Sections:

* ``scan``: the selective scan alone, forward, with z, D, the dt bias and softplus, as the mixer
  calls it, at length ``--scan-length``. "GB/s" counts the bytes that any scan must move: u, dt
  and z read and y written, (b, l, d) each, and B and C read, (b, l, n) each, all in ``--dtype``.
  A, D and the bias are left out (under 0.1% of the total). "of peak" divides by the nominal
  memory bandwidth that the CUDA driver reports (memory clock x bus width x 2), or by
  ``--peak-gbps``. "of copy" divides by the bandwidth of a 1 GiB device-to-device copy measured
  at the start. With ``--backward``, the section also times forward + backward.
* ``prefill``: a forward pass over ``--prompt-length`` tokens with logits for the last position
  only. Tokens/s is b * l / time.
* ``decode``: ``--decode-steps`` single-token steps from an empty cache, run as ``Mamba.step``
  does but without its token-id range check, which copies to the host. Each row runs the state
  update with its contender's backend; the ``triton`` rows also swap the mixer's
  ``causal_conv1d_step`` for ``causal_conv1d_update_triton`` in this process.
  ``--cuda-graph`` adds rows that capture one step in a ``torch.cuda.CUDAGraph`` and replay it,
  which removes the cost of launching kernels from Python. mamba_ssm has no rows here.

Usage::

    python benchmarks/bench_gpu.py [--models 130m 1.4b] [--batches 1 64] [--dtype bf16]
                                   [--scan-length 2048] [--prompt-length 2048] [--decode-steps 64]
                                   [--cuda-graph] [--backward] [--repeats 5] [--budget 20]
                                   [--json out.json]

Each measurement starts with a warm-up run, which also compiles the Triton kernels. Times are
medians over up to ``--repeats`` further runs, which stop early once they have taken ``--budget``
seconds. A case that runs out of GPU memory is reported as such and the script goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import statistics
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import torch

from mambakit.config import MambaConfig
from mambakit.models.mamba_lm import Mamba
from mambakit.modules import mixer as mixer_module
from mambakit.ops.selective_scan import selective_scan

MODEL_SHAPES = {
    "130m": dict(d_model=768, n_layer=24),
    "1.4b": dict(d_model=2048, n_layer=48),
}
VOCAB_SIZE = 50280
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODEL_SHAPES), default=["130m", "1.4b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64], help="batch sizes b")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="dtype of weights and activations")
    parser.add_argument("--scan-length", type=int, default=2048, help="sequence length of the scan section, in tokens")
    parser.add_argument("--prompt-length", type=int, default=2048, help="prompt length of the prefill section, in tokens")
    parser.add_argument("--decode-steps", type=int, default=64, help="tokens per sequence in one decode measurement")
    parser.add_argument("--sections", nargs="+", choices=["scan", "prefill", "decode"], default=["scan", "prefill", "decode"])
    parser.add_argument("--cuda-graph", action="store_true", help="also time decode steps replayed from a CUDA graph")
    parser.add_argument("--backward", action="store_true", help="also time scan forward + backward")
    parser.add_argument("--repeats", type=int, default=5, help="maximum timed runs per measurement after the warm-up")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds after which a measurement stops repeating")
    parser.add_argument("--peak-gbps", type=float, default=None, help="nominal memory bandwidth in GB/s, for when the driver query fails")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


# --- timing -------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(function: Callable[[], object], device: torch.device, repeats: int, budget: float) -> float:
    """Run ``function`` once to warm up, then up to ``repeats`` times, and return the median seconds.

    Repeats stop once they have taken ``budget`` seconds in total, so slow contenders run fewer times.
    """
    function()
    synchronize(device)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if sum(times) > budget:
            break
    return statistics.median(times)


def run_case(description: str, case: Callable[[], dict]) -> dict:
    """Run one case and return its record, or a record with an error if the GPU runs out of memory."""
    try:
        return case()
    except torch.cuda.OutOfMemoryError as error:
        print(f"  {description}: out of GPU memory ({str(error).splitlines()[0]})", file=sys.stderr)
        torch.cuda.empty_cache()
        return {"error": "out of memory"}


# --- device facts -------------------------------------------------------------------------------


def nominal_bandwidth_gbps(device: torch.device, override: float | None) -> float | None:
    """Return the nominal memory bandwidth in GB/s: ``override``, or what the driver reports, or None.

    ``triton.testing.get_dram_gbps`` (triton 3.x) computes memory clock x bus width x 2 from the
    CUDA device attributes. The factor 2 is because HBM and GDDR transfer twice per clock.
    """
    if override is not None:
        return override
    try:
        import triton.testing

        index = device.index if device.index is not None else torch.cuda.current_device()
        return float(triton.testing.get_dram_gbps(index))
    except (ImportError, AttributeError, KeyError, RuntimeError) as error:
        print(f"nominal memory bandwidth unknown ({error}); pass --peak-gbps", file=sys.stderr)
        return None


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Return the bandwidth of a 1 GiB device-to-device copy, counting the read and the write."""
    source = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = measure(functools.partial(target.copy_, source), device, repeats=10, budget=5.0)
    return 2 * source.numel() / seconds / 1e9


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def mamba_ssm_available() -> bool:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except ImportError:
        return False
    return True


# --- models -------------------------------------------------------------------------------------


def build_model(name: str, dtype: torch.dtype, device: torch.device) -> Mamba:
    """Return a Mamba model with random weights in the shapes of ``name``, cast to ``dtype``."""
    config = MambaConfig(vocab_size=VOCAB_SIZE, **MODEL_SHAPES[name])
    with device:  # build the parameters on the device, which is much faster than on the host
        model = Mamba(config)
    return model.cast(dtype).eval()


@contextlib.contextmanager
def triton_decode_ops():
    """Make ``MambaMixer.step`` call the Triton conv-step kernel inside the ``with`` block.

    The mixer calls its conv step by module-level name, so swapping the name is enough; the
    state update follows the ``backend`` argument instead.
    """
    from mambakit.ops.selective_scan_triton import causal_conv1d_update_triton

    saved = mixer_module.causal_conv1d_step
    mixer_module.causal_conv1d_step = causal_conv1d_update_triton
    try:
        yield
    finally:
        mixer_module.causal_conv1d_step = saved


def decode_step(model: Mamba, input_ids: torch.Tensor, cache, backend: str = "reference") -> torch.Tensor:
    """Run one token per sequence through ``model`` as ``Mamba.step`` does, without host copies.

    ``Mamba.step`` checks the token ids with ``int(tensor.min())``, which waits for the GPU and
    cannot be captured in a CUDA graph.
    """
    hidden = model.backbone.embedding(input_ids)
    for index, layer in enumerate(model.backbone.layers):
        hidden = layer.step(hidden, cache.layer(index), backend=backend)
    return model.lm_head(model.backbone.norm_f(hidden))


# --- sections -----------------------------------------------------------------------------------


def scan_inputs(batch: int, length: int, d_inner: int, d_state: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Return the scan's arguments as the mixer passes them, with random values."""

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    return dict(
        u=randn(batch, length, d_inner),
        delta=randn(batch, length, d_inner),
        A=-torch.rand(d_inner, d_state, device=device) - 0.1,
        B=randn(batch, length, d_state),
        C=randn(batch, length, d_state),
        D=torch.randn(d_inner, device=device),
        z=randn(batch, length, d_inner),
        delta_bias=torch.randn(d_inner, device=device) * 0.3,
        delta_softplus=True,
    )


def scan_bytes(batch: int, length: int, d_inner: int, d_state: int, dtype: torch.dtype) -> int:
    """Return the bytes a scan must move: u, dt, z in and y out (b, l, d), B and C in (b, l, n)."""
    element = torch.empty(0, dtype=dtype).element_size()
    return (4 * batch * length * d_inner + 2 * batch * length * d_state) * element


def scan_case(args, inputs: dict, contender: str, moved: int, device, peak_gbps, copy_gbps) -> dict:
    """Time one scan contender and return its record."""

    def forward():
        with torch.no_grad():
            return selective_scan(**inputs, backend=contender)

    seconds = measure(forward, device, args.repeats, args.budget)
    gbps = moved / seconds / 1e9
    record = {
        "seconds": seconds,
        "gbps": gbps,
        "of_peak": None if peak_gbps is None else gbps / peak_gbps,
        "of_copy": gbps / copy_gbps,
    }
    if args.backward:
        record["forward_backward_seconds"] = measure(
            functools.partial(scan_forward_backward, inputs, contender), device, args.repeats, args.budget
        )
    return record


def scan_forward_backward(inputs: dict, contender: str) -> None:
    leaves = {name: inputs[name].detach().requires_grad_(True) for name in ("u", "delta", "B", "C", "z")}
    y = selective_scan(**{**inputs, **leaves}, backend=contender)
    y.backward(torch.ones_like(y))


def bench_scan(args, contenders, device, peak_gbps, copy_gbps) -> list[dict]:
    records = []
    for model_name in args.models:
        for batch in args.batches:
            records += bench_scan_shape(args, model_name, batch, contenders, device, peak_gbps, copy_gbps)
            torch.cuda.empty_cache()  # the inputs of this shape are freed now
    return records


def bench_scan_shape(args, model_name, batch, contenders, device, peak_gbps, copy_gbps) -> list[dict]:
    dtype = DTYPES[args.dtype]
    d_inner = 2 * MODEL_SHAPES[model_name]["d_model"]
    inputs = scan_inputs(batch, args.scan_length, d_inner, 16, dtype, device)
    moved = scan_bytes(batch, args.scan_length, d_inner, 16, dtype)
    records = []
    for contender in contenders:
        description = f"scan {model_name} b={batch} {contender}"
        print(f"  {description}", file=sys.stderr)
        case = functools.partial(scan_case, args, inputs, contender, moved, device, peak_gbps, copy_gbps)
        record = {"model": model_name, "batch": batch, "length": args.scan_length, "contender": contender}
        records.append({**record, **run_case(description, case)})
    return records


def prefill_case(args, model: Mamba, input_ids: torch.Tensor, contender: str, device) -> dict:
    """Time one prefill contender and return its record."""

    def forward():
        with torch.no_grad():
            return model(input_ids, last_only=True, backend=contender)

    seconds = measure(forward, device, args.repeats, args.budget)
    return {"seconds": seconds, "tokens_per_second": input_ids.numel() / seconds}


def bench_prefill(args, contenders, device) -> list[dict]:
    records = []
    for model_name in args.models:
        records += bench_prefill_model(args, model_name, contenders, device)
        torch.cuda.empty_cache()  # the weights of this model are freed now
    return records


def bench_prefill_model(args, model_name, contenders, device) -> list[dict]:
    model = build_model(model_name, DTYPES[args.dtype], device)
    records = []
    for batch in args.batches:
        input_ids = torch.randint(0, VOCAB_SIZE, (batch, args.prompt_length), device=device)
        for contender in contenders:
            description = f"prefill {model_name} b={batch} {contender}"
            print(f"  {description}", file=sys.stderr)
            case = functools.partial(prefill_case, args, model, input_ids, contender, device)
            record = {"model": model_name, "batch": batch, "length": args.prompt_length, "contender": contender}
            records.append({**record, **run_case(description, case)})
    return records


def decode_case(args, model: Mamba, input_ids: torch.Tensor, contender: str, graphed: bool, device) -> dict:
    """Time ``--decode-steps`` decode steps of one contender from an empty cache and return the record."""
    cache = model.allocate_cache(input_ids.shape[0])
    ops = triton_decode_ops() if contender == "triton" else contextlib.nullcontext()
    with ops, torch.no_grad():
        if graphed:
            run_steps = graphed_steps(model, input_ids, cache, args.decode_steps, contender)
        else:

            def run_steps():
                for _ in range(args.decode_steps):
                    decode_step(model, input_ids, cache, backend=contender)

        seconds = measure(run_steps, device, args.repeats, args.budget)
    return {"seconds": seconds, "tokens_per_second": input_ids.shape[0] * args.decode_steps / seconds}


def bench_decode(args, device) -> list[dict]:
    records = []
    for model_name in args.models:
        records += bench_decode_model(args, model_name, device)
        torch.cuda.empty_cache()  # the weights and caches of this model are freed now
    return records


def bench_decode_model(args, model_name, device) -> list[dict]:
    modes = [("reference", False), ("triton", False)]
    if args.cuda_graph:
        modes += [("reference", True), ("triton", True)]
    model = build_model(model_name, DTYPES[args.dtype], device)
    records = []
    for batch in args.batches:
        input_ids = torch.randint(0, VOCAB_SIZE, (batch,), device=device)
        for contender, graphed in modes:
            label = contender + (" + CUDA graph" if graphed else "")
            description = f"decode {model_name} b={batch} {label}"
            print(f"  {description}", file=sys.stderr)
            case = functools.partial(decode_case, args, model, input_ids, contender, graphed, device)
            record = {"model": model_name, "batch": batch, "steps": args.decode_steps, "contender": label}
            records.append({**record, **run_case(description, case)})
    return records


def graphed_steps(model: Mamba, input_ids: torch.Tensor, cache, steps: int, backend: str) -> Callable[[], None]:
    """Capture one decode step in a CUDA graph and return a function that replays it ``steps`` times.

    The warm-up runs on a side stream, as PyTorch requires before a capture, and compiles the
    Triton kernels, which cannot compile during a capture. Replays reuse the captured addresses,
    so the cache must stay the same tensors, which ``decode_step`` updates in place.
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            decode_step(model, input_ids, cache, backend=backend)
    torch.cuda.current_stream().wait_stream(stream)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step(model, input_ids, cache, backend=backend)

    def replay():
        for _ in range(steps):
            graph.replay()

    return replay


# --- report -------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def report(results: dict) -> str:
    sections = []
    if results.get("scan"):
        rows = []
        for record in results["scan"]:
            if "error" in record:
                values = [record["error"], "", "", "", ""]
            else:
                backward = record.get("forward_backward_seconds")
                values = [
                    f"{1e3 * record['seconds']:.2f}",
                    f"{record['gbps']:.0f}",
                    percent(record["of_peak"]),
                    percent(record["of_copy"]),
                    "" if backward is None else f"{1e3 * backward:.2f}",
                ]
            rows.append([record["model"], str(record["batch"]), str(record["length"]), record["contender"], *values])
        headers = ["model", "b", "l", "contender", "forward ms", "GB/s", "of peak", "of copy", "fwd+bwd ms"]
        sections.append("### Scan\n\n" + format_table(headers, rows))

    for key, title, length_key in (("prefill", "Prefill", "length"), ("decode", "Decode", "steps")):
        if not results.get(key):
            continue
        rows = []
        for record in results[key]:
            if "error" in record:
                values = [record["error"], ""]
            else:
                values = [f"{1e3 * record['seconds']:.1f}", f"{record['tokens_per_second']:.0f}"]
            rows.append([record["model"], str(record["batch"]), str(record[length_key]), record["contender"], *values])
        headers = ["model", "b", length_key, "contender", "ms", "tokens/s"]
        sections.append(f"### {title}\n\n" + format_table(headers, rows))
    return "\n\n".join(sections)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        cuda_build = torch.version.cuda or "none (a CPU-only build)"
        sys.exit(
            "bench_gpu.py needs a CUDA GPU, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {cuda_build}). Run it on a machine with an NVIDIA GPU "
            "and a CUDA build of PyTorch; for CPU timings use benchmarks/bench_scan.py or bench_model.py."
        )
    from mambakit.ops import selective_scan_triton

    device = torch.device("cuda")
    reason = selective_scan_triton.unavailable_reason(device)
    if reason is not None:
        sys.exit(f"bench_gpu.py cannot run the Triton kernels: {reason}")

    contenders = ["triton", "reference"] + (["mamba_ssm"] if mamba_ssm_available() else [])
    peak_gbps = nominal_bandwidth_gbps(device, args.peak_gbps)
    copy_gbps = copy_bandwidth_gbps(device)
    torch.cuda.empty_cache()  # return the 2 GiB of the copy test to the device
    environment = {
        "gpu": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": installed_version("triton"),
        "mamba_ssm": installed_version("mamba_ssm") or installed_version("mamba-ssm"),
        "python": platform.python_version(),
        "dtype": args.dtype,
        "nominal_bandwidth_gbps": peak_gbps,
        "copy_bandwidth_gbps": copy_gbps,
    }
    print(f"{environment['gpu']}: nominal bandwidth {peak_gbps or 'unknown'} GB/s, copy {copy_gbps:.0f} GB/s", file=sys.stderr)

    results: dict = {"environment": environment}
    if "scan" in args.sections:
        results["scan"] = bench_scan(args, contenders, device, peak_gbps, copy_gbps)
    if "prefill" in args.sections:
        results["prefill"] = bench_prefill(args, contenders, device)
    if "decode" in args.sections:
        results["decode"] = bench_decode(args, device)

    print(report(results))
    print()
    print(json.dumps(results, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
