"""Scaling benchmark: Mamba against a Transformer of the same size, as the context grows.

Shape letters: b batch, L prompt or context length in tokens, V vocabulary.

``mambakit bench scaling`` (or ``python -m mambakit.bench.scaling``) builds a Mamba model of a
published shape and a GPT-NeoX-style Transformer with the same width and vocabulary and the
layer count that best matches its parameter count (``mambakit.baselines.transformer``). Both get
random weights, because the time of a forward pass does not depend on the values. In one process
and on one device it measures:

- prefill: time to run a (1, L) prompt into an empty inference cache, for each L;
- decode: median time of one generated token after L context tokens (the prefill above fills
  the cache, then ``decode_steps`` single-token steps are timed, spread over rounds that visit
  every length, see ``run_length_series``);
- state memory: bytes of the inference state after L tokens, the KV cache of the Transformer
  (the part that contains the context) and the fixed-size ``InferenceCache`` of Mamba;
- throughput: generated tokens per second for b sequences at a fixed context, for each b.

Prompts are prefilled in increasing order of length, alternating between the models so that
background load affects both alike. A model stops at the first length whose prefill took longer than the
time budget (later lengths are recorded as "stopped: time budget"), or before a length whose
estimated memory exceeds the memory budget ("stopped: memory"). Batch sizes stop the same way.

``results.json`` schema (``schema_version`` 1)::

    schema_version   1
    benchmark        "scaling"
    weights          "random"
    machine          cpu_model, logical_cpus, usable_cpus, torch_version, torch_threads,
                     numba_threads (null without numba), python_version, platform, device, dtype, date (UTC, ISO 8601),
                     load_average_start, load_average_end (1, 5, 15 min; null when unknown),
                     transformers_version (null when not installed)
    settings         model_size, lengths, batch_sizes, throughput_context, decode_steps,
                     time_budget_s, memory_budget_bytes, baseline, quick, seed, scan_backend
    models           {"mamba": MODEL, "transformer": MODEL}
    summary          per-model ratios and the acceptance check, see ``summarize``

    MODEL            name, label, implementation, parameters, config (dict), stopped_lengths
                     and stopped_batch_sizes (null, or {"reason", "at"}), by_length, by_batch_size
    by_length[i]     length, status ("measured", "stopped: time budget", "stopped: memory"),
                     prefill_seconds, prefill_runs, decode_seconds_per_token (median),
                     decode_seconds_per_token_min, decode_step_seconds (all samples),
                     state_bytes (the part holding the context), state_allocated_bytes,
                     estimated_peak_bytes
    by_batch_size[i] batch_size, context, status, seconds_per_step (median),
                     seconds_per_step_min, step_seconds, tokens_per_second (batch size over
                     the median), state_bytes, state_allocated_bytes, estimated_peak_bytes

The minimum is recorded beside each median because on a shared machine the samples are often
bimodal: the cost of the step itself, and that cost plus a wait for a core that another process
holds. The minimum estimates the first, the median what a user of a busy machine sees.

Values of entries that were not measured are null. Times are seconds of wall-clock time, memory
is in bytes.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from tqdm import tqdm

from mambakit.baselines.transformer import (
    KVCache,
    TransformerLM,
    TransformersGPTNeoX,
    matching_transformer_config,
)
from mambakit.config import MambaConfig
from mambakit.models.mamba_lm import Mamba
from mambakit.modules.cache import InferenceCache

# A fixed name, so that ``python -m`` logs under the same name as an import does.
logger = logging.getLogger("mambakit.bench.scaling")

SCHEMA_VERSION = 1

# Published Mamba shapes (state-spaces/mamba-130m and -370m, vocabulary padded to 50280) and a
# small shape for fast runs.
MODEL_SIZES = {
    "130m": dict(d_model=768, n_layer=24, vocab_size=50280),
    "370m": dict(d_model=1024, n_layer=48, vocab_size=50280),
    "tiny": dict(d_model=256, n_layer=4, vocab_size=8192),
}

DEFAULTS = dict(
    model_size="130m",
    lengths=[128 << i for i in range(8)],  # 128 .. 16384
    batch_sizes=[1, 4, 16, 64],
    throughput_context=1024,
    time_budget_s=60.0,
)
QUICK_DEFAULTS = dict(
    model_size="tiny",
    lengths=[128 << i for i in range(7)],  # 128 .. 8192
    batch_sizes=[1, 4, 16, 64],
    throughput_context=256,
    time_budget_s=10.0,
)

# A prefill shorter than this is repeated (up to PREFILL_MAX_RUNS runs) and the median is kept,
# because a single run of a few milliseconds is dominated by timer and scheduler noise.
PREFILL_REPEAT_BELOW_S = 0.5
PREFILL_MAX_RUNS = 3

# Decode steps are timed in this many rounds over all contexts; see run_length_series.
DECODE_ROUNDS = 4

# Acceptance check: Mamba's time per generated token at the longest context may be at most this
# multiple of its time at the shortest context.
MAMBA_DECODE_RATIO_LIMIT = 1.15

STATUS_MEASURED = "measured"
STOPPED_TIME = "stopped: time budget"
STOPPED_MEMORY = "stopped: memory"


# Models under test


class ModelRunner:
    """One model behind the calls the benchmark makes, whatever its cache type.

    Subclasses implement the cache methods (``allocate``, ``replicate``, ``state_bytes``) and the
    memory estimates (``state_allocation_bytes``, ``estimate_activation_bytes``). Prefill and step
    are shared.
    """

    name = ""

    def __init__(self, model: torch.nn.Module, label: str, implementation: str, config: dict) -> None:
        self.model = model
        self.label = label
        self.implementation = implementation
        self.config = config

    @property
    def element_size(self) -> int:
        return next(self.model.parameters()).element_size()

    def parameters(self) -> int:
        return self.model.num_parameters()

    def allocate(self, batch_size: int, max_length: int):
        raise NotImplementedError

    def replicate(self, cache, batch_size: int, max_length: int):
        """Return a new cache of ``batch_size`` sequences that each copy the single sequence in ``cache``.

        Identical prompts produce identical caches, so this equals prefilling ``batch_size`` copies
        of the prompt, at the cost of one.
        """
        raise NotImplementedError

    def state_bytes(self, cache) -> tuple[int, int]:
        """Return (bytes holding the current context, bytes allocated) of ``cache``."""
        raise NotImplementedError

    def estimate_activation_bytes(self, batch_size: int, length: int) -> int:
        raise NotImplementedError

    def estimate_peak_bytes(self, batch_size: int, length: int, max_length: int) -> int:
        """Estimate the memory a prefill of (b, L) needs beyond the weights: state plus activations."""
        return self.state_allocation_bytes(batch_size, max_length) + self.estimate_activation_bytes(batch_size, length)

    def state_allocation_bytes(self, batch_size: int, max_length: int) -> int:
        raise NotImplementedError

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor, cache) -> None:
        self.model(input_ids, cache=cache, last_only=True)

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, cache) -> None:
        self.model.step(input_ids, cache)


class MambaRunner(ModelRunner):
    name = "mamba"

    def allocate(self, batch_size: int, max_length: int) -> InferenceCache:
        return self.model.allocate_cache(batch_size)

    def replicate(self, cache: InferenceCache, batch_size: int, max_length: int) -> InferenceCache:
        copy_ = self.model.allocate_cache(batch_size)
        copy_.conv_states.copy_(cache.conv_states.expand_as(copy_.conv_states))
        copy_.ssm_states.copy_(cache.ssm_states.expand_as(copy_.ssm_states))
        copy_.seqlen_offset = cache.seqlen_offset
        return copy_

    def state_bytes(self, cache: InferenceCache) -> tuple[int, int]:
        return cache.nbytes(), cache.nbytes()

    def state_allocation_bytes(self, batch_size: int, max_length: int) -> int:
        config: MambaConfig = self.model.config
        per_sequence = config.n_layer * config.d_inner * (config.d_conv * self.element_size + config.d_state * 4)
        return batch_size * per_sequence

    def estimate_activation_bytes(self, batch_size: int, length: int) -> int:
        # NOTE: an estimate from reading the mixer, not a measurement. One layer runs at a time:
        # in_proj's output (2d), the convolution's input and output and dt (3d), the scan's fp32
        # copies of u, delta and z and its output (4d), plus the fp32 residual stream (2m).
        config: MambaConfig = self.model.config
        per_token = 10 * config.d_inner + 4 * config.d_model
        return batch_size * length * per_token * 4


class TransformerRunner(ModelRunner):
    name = "transformer"

    def allocate(self, batch_size: int, max_length: int):
        return self.model.allocate_cache(batch_size, max_length)

    def replicate(self, cache, batch_size: int, max_length: int):
        if isinstance(cache, KVCache):
            copy_ = self.model.allocate_cache(batch_size, max_length)
            used = cache.length
            copy_.keys[:, :, :, :used] = cache.keys[:, :, :, :used]
            copy_.values[:, :, :, :used] = cache.values[:, :, :, :used]
            copy_.length = used
            return copy_

        # transformers' DynamicCache: repeat every layer's rows in a copy.
        copy_ = copy.deepcopy(cache)
        copy_.inner.batch_repeat_interleave(batch_size)
        copy_.batch_size = batch_size
        return copy_

    def state_bytes(self, cache) -> tuple[int, int]:
        return cache.nbytes(), cache.allocated_nbytes()

    def state_allocation_bytes(self, batch_size: int, max_length: int) -> int:
        config = self.model.config
        return 2 * config.n_layer * batch_size * max_length * config.d_model * self.element_size

    def estimate_activation_bytes(self, batch_size: int, length: int) -> int:
        # NOTE: an estimate from reading the layer, not a measurement. One layer runs at a time:
        # qkv (3m), rotated q and k (2m), the attention output (m), the MLP's hidden layer before
        # and after GELU (8m), the residual sums (3m). SDPA's fused CPU kernel keeps only
        # per-block scores, so no (L, L) matrix is counted. The transformers baseline may build
        # an (L, L) mask, which this does not count either.
        config = self.model.config
        return batch_size * length * 17 * config.d_model * self.element_size


def build_runners(
    args: argparse.Namespace, settings: dict[str, Any], device: torch.device
) -> tuple[MambaRunner, TransformerRunner]:
    """Build the Mamba model and its parameter-matched Transformer with random weights."""
    shape = dict(MODEL_SIZES[settings["model_size"]])
    for key in ("d_model", "n_layer", "vocab_size"):
        override = getattr(args, key, None)
        if override is not None:
            shape[key] = override
    mamba_config = MambaConfig(**shape)

    # Heads have size 64, as in GPT-NeoX. A width that 64 does not divide, which only the hidden
    # --d-model override can give, falls back to a single head.
    n_head = None if mamba_config.d_model % 64 == 0 else 1
    match = matching_transformer_config(mamba_config, n_head=n_head)

    torch.manual_seed(settings["seed"])
    mamba = Mamba(mamba_config).to(device).eval()
    mamba.scan_backend = settings["scan_backend"]
    if settings["baseline"] == "transformers":
        transformer = TransformersGPTNeoX(match.config).to(device).eval()
        implementation = "transformers.GPTNeoXForCausalLM (sdpa attention, DynamicCache)"
    else:
        transformer = TransformerLM(match.config).to(device).eval()
        implementation = "mambakit.baselines.transformer.TransformerLM (SDPA attention, preallocated KV cache)"

    mamba_config_dict = {k: v for k, v in vars(mamba_config).items() if k != "layout"}
    mamba_runner = MambaRunner(
        mamba,
        label=f"Mamba ({mamba_config.n_layer} layers)",
        implementation="mambakit.models.mamba_lm.Mamba",
        config=mamba_config_dict,
    )
    transformer_runner = TransformerRunner(
        transformer,
        label=f"Transformer ({match.config.n_layer} layers)",
        implementation=implementation,
        config=asdict(match.config),
    )
    return mamba_runner, transformer_runner


# Measurement


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(function: Callable[[], None], device: torch.device) -> float:
    """Run ``function`` once and return its wall-clock time in seconds."""
    _synchronize(device)
    start = time.perf_counter()
    function()
    _synchronize(device)
    return time.perf_counter() - start


def _random_ids(runner: ModelRunner, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.randint(0, runner.config["vocab_size"], shape, device=device)


def warm_up(runner: ModelRunner, device: torch.device) -> None:
    """Run a short prefill and two steps untimed, so one-time costs (JIT, allocator) stay out of the timings."""
    cache = runner.allocate(1, 19)
    runner.prefill(_random_ids(runner, (1, 16), device), cache)
    for _ in range(2):
        runner.step(_random_ids(runner, (1,), device), cache)


def _time_steps(runner: ModelRunner, cache, batch_size: int, steps: int, device: torch.device) -> list[float]:
    samples = []
    for _ in range(steps):
        ids = _random_ids(runner, (batch_size,), device)
        samples.append(_timed(lambda ids=ids: runner.step(ids, cache), device))
    return samples


def measure_prefill(runner: ModelRunner, length: int, max_length: int, device: torch.device) -> tuple[dict, Any]:
    """Time the prefill of a (1, L) prompt into a cache with room for ``max_length`` tokens.

    Returns the prefill and state fields of a ``by_length`` entry, and the filled cache.
    """
    prompt = _random_ids(runner, (1, length), device)

    # Short prefills are repeated on a fresh cache and the median kept; see PREFILL_REPEAT_BELOW_S.
    prefill_times = []
    while True:
        cache = runner.allocate(1, max_length)
        prefill_times.append(_timed(lambda cache=cache: runner.prefill(prompt, cache), device))
        if prefill_times[0] >= PREFILL_REPEAT_BELOW_S or len(prefill_times) >= PREFILL_MAX_RUNS:
            break

    # The state is read before any decode step, so it contains exactly L tokens.
    state_bytes, allocated_bytes = runner.state_bytes(cache)
    fields = {
        "prefill_seconds": statistics.median(prefill_times),
        "prefill_runs": len(prefill_times),
        "state_bytes": state_bytes,
        "state_allocated_bytes": allocated_bytes,
    }
    return fields, cache


def measure_batch(
    runner: ModelRunner, base_cache, batch_size: int, context: int, decode_steps: int, device: torch.device
) -> dict[str, Any]:
    """Time ``decode_steps`` steps of ``batch_size`` sequences that each contain ``context`` tokens.

    Returns the measured fields of a ``by_batch_size`` entry.
    """
    cache = runner.replicate(base_cache, batch_size, context + decode_steps)
    state_bytes, allocated_bytes = runner.state_bytes(cache)
    step_times = _time_steps(runner, cache, batch_size, decode_steps, device)
    seconds = statistics.median(step_times)
    return {
        "seconds_per_step": seconds,
        "seconds_per_step_min": min(step_times),
        "step_seconds": step_times,
        "tokens_per_second": batch_size / seconds,
        "state_bytes": state_bytes,
        "state_allocated_bytes": allocated_bytes,
    }


def _empty_length_entry(length: int, status: str, estimate: int | None) -> dict[str, Any]:
    return {
        "length": length,
        "status": status,
        "prefill_seconds": None,
        "prefill_runs": 0,
        "decode_seconds_per_token": None,
        "decode_seconds_per_token_min": None,
        "decode_step_seconds": [],
        "state_bytes": None,
        "state_allocated_bytes": None,
        "estimated_peak_bytes": estimate,
    }


def _empty_batch_entry(batch_size: int, context: int, status: str, estimate: int | None) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "context": context,
        "status": status,
        "seconds_per_step": None,
        "seconds_per_step_min": None,
        "step_seconds": [],
        "tokens_per_second": None,
        "state_bytes": None,
        "state_allocated_bytes": None,
        "estimated_peak_bytes": estimate,
    }


def _steps_per_round(decode_steps: int) -> int:
    return math.ceil(decode_steps / DECODE_ROUNDS)


def run_length_series(
    runners: list[ModelRunner],
    results: dict[str, dict],
    settings: dict[str, Any],
    device: torch.device,
    bar: tqdm,
) -> None:
    """Fill ``by_length`` of every model: prefill each length, then time decode steps in rounds.

    Prefill runs lengths in increasing order, alternating models at each length, and keeps
    every filled cache. Decoding then visits all (length, model) caches in each of
    ``DECODE_ROUNDS`` rounds, so a change in background load during the run affects short and
    long contexts alike instead of whichever length happened to run at that moment.
    """
    budget_bytes = settings["memory_budget_bytes"]
    steps_per_round = _steps_per_round(settings["decode_steps"])
    max_extra = DECODE_ROUNDS * steps_per_round
    caches: dict[tuple[str, int], Any] = {}
    held_bytes = 0

    for length in settings["lengths"]:
        for runner in runners:
            record = results[runner.name]
            bar.set_postfix_str(f"{runner.name} prefill L={length}")
            estimate = runner.estimate_peak_bytes(1, length, length + max_extra)

            # The caches of shorter prompts stay allocated for the decode rounds, so they count
            # against the budget too.
            stopped = record["stopped_lengths"]
            if stopped is None and held_bytes + estimate > budget_bytes:
                stopped = record["stopped_lengths"] = {"reason": STOPPED_MEMORY, "at": length}
                logger.info("%s: stopped at length %d: estimated %d bytes plus %d bytes of caches held "
                            "exceed the memory budget", runner.name, length, estimate, held_bytes)
            if stopped is not None:
                record["by_length"].append(_empty_length_entry(length, stopped["reason"], estimate))
                bar.update(1)
                continue

            fields, cache = measure_prefill(runner, length, length + max_extra, device)
            entry = {"length": length, "status": STATUS_MEASURED, "estimated_peak_bytes": estimate}
            entry.update(fields)
            entry.update(decode_seconds_per_token=None, decode_seconds_per_token_min=None, decode_step_seconds=[])
            record["by_length"].append(entry)
            caches[runner.name, length] = cache
            held_bytes += runner.state_allocation_bytes(1, length + max_extra)
            if entry["prefill_seconds"] > settings["time_budget_s"]:
                # This length was measured; the ones after it are skipped.
                record["stopped_lengths"] = {"reason": STOPPED_TIME, "at": length}
                logger.info("%s: prefill of %d tokens took %.1f s, over the time budget of %.1f s; "
                            "longer prompts are skipped", runner.name, length, entry["prefill_seconds"],
                            settings["time_budget_s"])
            bar.update(1)

    entries = {(name, entry["length"]): entry for name, record in results.items() for entry in record["by_length"]}
    for round_index in range(DECODE_ROUNDS):
        bar.set_postfix_str(f"decode round {round_index + 1}/{DECODE_ROUNDS}")
        for length in settings["lengths"]:
            for runner in runners:
                cache = caches.get((runner.name, length))
                if cache is not None:
                    samples = _time_steps(runner, cache, 1, steps_per_round, device)
                    entries[runner.name, length]["decode_step_seconds"].extend(samples)
        bar.update(1)
    for entry in entries.values():
        if entry["decode_step_seconds"]:
            entry["decode_seconds_per_token"] = statistics.median(entry["decode_step_seconds"])
            entry["decode_seconds_per_token_min"] = min(entry["decode_step_seconds"])


def run_batch_series(
    runners: list[ModelRunner],
    results: dict[str, dict],
    settings: dict[str, Any],
    device: torch.device,
    bar: tqdm,
) -> None:
    """Fill ``by_batch_size`` of every model at the fixed context ``throughput_context``."""
    budget_bytes = settings["memory_budget_bytes"]
    context = settings["throughput_context"]
    steps = settings["decode_steps"]
    for runner in runners:
        record = results[runner.name]

        # One sequence is prefilled once; every batch copies its cache (see ModelRunner.replicate).
        base_cache = None
        if runner.estimate_peak_bytes(1, context, context + steps) <= budget_bytes:
            base_cache = runner.allocate(1, context + steps)
            runner.prefill(_random_ids(runner, (1, context), device), base_cache)

        for batch_size in settings["batch_sizes"]:
            bar.set_postfix_str(f"{runner.name} throughput b={batch_size}")
            estimate = runner.state_allocation_bytes(batch_size, context + steps) + runner.estimate_activation_bytes(
                batch_size, 1
            )
            stopped = record["stopped_batch_sizes"]
            if stopped is None and (base_cache is None or estimate > budget_bytes):
                stopped = record["stopped_batch_sizes"] = {"reason": STOPPED_MEMORY, "at": batch_size}
                logger.info("%s: stopped at batch size %d, estimated %d bytes exceed the memory budget",
                            runner.name, batch_size, estimate)
            if stopped is not None:
                record["by_batch_size"].append(_empty_batch_entry(batch_size, context, stopped["reason"], estimate))
                bar.update(1)
                continue

            entry = {"batch_size": batch_size, "context": context, "status": STATUS_MEASURED,
                     "estimated_peak_bytes": estimate}
            entry.update(measure_batch(runner, base_cache, batch_size, context, steps, device))
            record["by_batch_size"].append(entry)
            if sum(entry["step_seconds"]) > settings["time_budget_s"]:
                record["stopped_batch_sizes"] = {"reason": STOPPED_TIME, "at": batch_size}
                logger.info("%s: %d steps at batch size %d took longer than the time budget; larger batches "
                            "are skipped", runner.name, steps, batch_size)
            bar.update(1)


# Summary


def _measured(entries: list[dict], key: str) -> list[dict]:
    return [entry for entry in entries if entry["status"] == STATUS_MEASURED and entry[key] is not None]


def summarize(models: dict[str, dict]) -> dict[str, Any]:
    """Compute the ratios reported in the docs and the acceptance check.

    Per model:

    - ``decode_ratio``: median time per token at the longest measured context over the median at
      the shortest. ``decode_ratio_min`` divides the minimums instead.
    - ``state_memory_ratio``: state bytes at the longest context over those at the shortest.
    - ``prefill_exponent_last_doubling``: slope of log time over log length between the two
      longest measured prompts (1 is linear, 2 quadratic).

    The acceptance check requires Mamba's ``decode_ratio`` to be at most
    ``MAMBA_DECODE_RATIO_LIMIT`` and its state memory to be constant.
    """
    summary: dict[str, Any] = {}
    for name, record in models.items():
        decoded = _measured(record["by_length"], "decode_seconds_per_token")
        prefilled = _measured(record["by_length"], "prefill_seconds")
        item: dict[str, Any] = {
            "shortest_context": None, "longest_context": None, "decode_ratio": None, "decode_ratio_min": None,
            "state_memory_ratio": None, "prefill_exponent_last_doubling": None,
        }
        if decoded:
            first, last = decoded[0], decoded[-1]
            item["shortest_context"] = first["length"]
            item["longest_context"] = last["length"]
            item["decode_ratio"] = last["decode_seconds_per_token"] / first["decode_seconds_per_token"]
            item["decode_ratio_min"] = last["decode_seconds_per_token_min"] / first["decode_seconds_per_token_min"]
            item["state_memory_ratio"] = last["state_bytes"] / first["state_bytes"]
        if len(prefilled) >= 2:
            shorter, longer = prefilled[-2], prefilled[-1]
            item["prefill_exponent_last_doubling"] = math.log(
                longer["prefill_seconds"] / shorter["prefill_seconds"]
            ) / math.log(longer["length"] / shorter["length"])
        summary[name] = item

    mamba = summary.get("mamba", {})
    ratio = mamba.get("decode_ratio")
    summary["acceptance"] = {
        "mamba_decode_ratio_limit": MAMBA_DECODE_RATIO_LIMIT,
        "mamba_decode_ratio": ratio,
        "mamba_decode_ratio_min": mamba.get("decode_ratio_min"),
        "mamba_decode_within_limit": ratio is not None and ratio <= MAMBA_DECODE_RATIO_LIMIT,
        "mamba_state_constant": mamba.get("state_memory_ratio") == 1.0,
    }
    return summary


# Output


def _format(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "-" if value is None else f"{value * scale:.{digits}g}"


def format_tables(result: dict[str, Any]) -> str:
    """Render the by-length and by-batch-size series as two plain-text tables."""
    mamba, transformer = result["models"]["mamba"], result["models"]["transformer"]
    mib = 1 / (1 << 20)
    lines = []

    headers = ["length", "prefill Mamba s", "prefill Transf. s", "decode Mamba ms/tok", "decode Transf. ms/tok",
               "state Mamba MiB", "KV Transf. MiB"]
    rows = []
    for m, t in zip(mamba["by_length"], transformer["by_length"]):
        rows.append([
            str(m["length"]),
            _format(m["prefill_seconds"]) if m["status"] == STATUS_MEASURED else m["status"],
            _format(t["prefill_seconds"]) if t["status"] == STATUS_MEASURED else t["status"],
            _format(m["decode_seconds_per_token"], 1e3),
            _format(t["decode_seconds_per_token"], 1e3),
            _format(m["state_bytes"], mib),
            _format(t["state_bytes"], mib),
        ])
    lines += _table(headers, rows)
    lines.append("")

    context = result["settings"]["throughput_context"]
    headers = ["batch", f"Mamba tok/s @{context}", f"Transf. tok/s @{context}", "state Mamba MiB", "KV Transf. MiB"]
    rows = []
    for m, t in zip(mamba["by_batch_size"], transformer["by_batch_size"]):
        rows.append([
            str(m["batch_size"]),
            _format(m["tokens_per_second"]) if m["status"] == STATUS_MEASURED else m["status"],
            _format(t["tokens_per_second"]) if t["status"] == STATUS_MEASURED else t["status"],
            _format(m["state_bytes"], mib),
            _format(t["state_bytes"], mib),
        ])
    lines += _table(headers, rows)
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def render(cells: list[str]) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))

    return [render(headers), render(["-" * width for width in widths]), *[render(row) for row in rows]]


PLOTS = {
    # file name: (series, x key, y key, y scale, x label, y label, title)
    "scaling_prefill.png": ("by_length", "length", "prefill_seconds", 1.0,
                            "prompt length (tokens)", "prefill time (s)", "Prefill time vs prompt length"),
    "scaling_decode.png": ("by_length", "length", "decode_seconds_per_token", 1e3,
                           "context length (tokens)", "time per generated token (ms)",
                           "Decode cost vs context length (batch 1)"),
    "scaling_memory.png": ("by_length", "length", "state_bytes", 1 / (1 << 20),
                           "context length (tokens)", "inference state (MiB)",
                           "Inference state memory vs context length (batch 1)"),
    "scaling_throughput.png": ("by_batch_size", "batch_size", "tokens_per_second", 1.0,
                               "batch size (sequences)", "generation throughput (tokens/s)",
                               "Throughput vs batch size"),
}

# The decode plot also draws the minimum over the samples, dotted, beside the median.
MIN_KEYS = {"decode_seconds_per_token": "decode_seconds_per_token_min"}


def write_plots(result: dict[str, Any], out_dir: str) -> list[str]:
    """Write one log-log PNG per measurement to ``out_dir``; return the paths (none without matplotlib)."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        logger.warning("matplotlib is not installed, so no plots were written; install it with "
                       "`pip install matplotlib` (the 'plot' extra)")
        return []

    machine = result["machine"]
    threads = machine["torch_threads"]
    subtitle = (f"{machine['device']} {machine['dtype']}, {threads} thread{'s' if threads != 1 else ''}, "
                f"{result['settings']['model_size']} shape, random weights")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    minor_labels = FuncFormatter(
        lambda value, _: f"{value:g}" if round(value / 10 ** math.floor(math.log10(value))) in (2, 3, 5) else ""
    )
    paths = []
    for file_name, (series, x_key, y_key, scale, x_label, y_label, title) in PLOTS.items():
        figure = Figure(figsize=(6.4, 4.2), dpi=100)
        axes = figure.add_subplot()
        x_values = set()
        for (marker, color), record in zip([("o", "tab:blue"), ("s", "tab:orange")], result["models"].values()):
            points = [(entry[x_key], entry[y_key] * scale) for entry in _measured(record[series], y_key)]
            if not points:
                continue
            xs, ys = zip(*points)
            x_values.update(xs)
            label = record["label"] + (" median" if y_key in MIN_KEYS else "")
            axes.plot(xs, ys, marker=marker, color=color, label=label)
            if y_key in MIN_KEYS:
                minima = [entry[MIN_KEYS[y_key]] * scale for entry in _measured(record[series], y_key)]
                axes.plot(xs, minima, linestyle=":", marker=marker, markersize=3, color=color,
                          label=record["label"] + " min")
        if series == "by_batch_size":
            title += f" (context {result['settings']['throughput_context']} tokens)"
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(sorted(x_values))
        axes.xaxis.set_major_formatter(plain)
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.yaxis.set_major_formatter(plain)
        # Minor ticks at 2, 3 and 5 times a power of ten get labels, but only when the axis
        # spans less than about 1.5 decades, so that a long axis stays readable.
        low, high = axes.get_ylim()
        axes.yaxis.set_minor_formatter(minor_labels if math.log10(high / low) < 1.5 else NullFormatter())
        axes.tick_params(axis="x", labelrotation=45, labelsize=8)
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(f"{title}\n{subtitle}", fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = os.path.join(out_dir, file_name)
        figure.savefig(path)
        paths.append(path)
    return paths


# Settings and machine


def _available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def configure_threads(threads: int | None) -> int:
    """Give torch and numba the same CPU thread count (``threads``, or torch's current one) and return it.

    numba's OpenMP threading layer shares the OpenMP runtime with torch. Starting that layer
    sets the runtime's thread count to ``NUMBA_NUM_THREADS``, and each parallel numba kernel
    sets it to numba's own count. Unless the two agree, the first Mamba prefill silently
    changes the thread count of every later torch op.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if threads is None:
        threads = torch.get_num_threads()
    try:
        import numba
    except ImportError:
        numba = None
    if numba is not None:
        limit = numba.config.NUMBA_NUM_THREADS
        if threads > limit:
            logger.warning("numba allows at most %d threads (NUMBA_NUM_THREADS), fewer than torch's %d; "
                           "the Mamba scan runs with %d", limit, threads, limit)
        # This starts numba's threading layer, which resets the OpenMP thread count, so torch's
        # count is set after it.
        numba.set_num_threads(min(threads, limit))
    torch.set_num_threads(threads)
    return threads


def _numba_threads() -> int | None:
    try:
        import numba
    except ImportError:
        return None
    return numba.get_num_threads()


def machine_info(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Describe the machine and software the benchmark runs on."""
    try:
        import transformers

        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": _numba_threads(),
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average_start": _load_average(),
        "load_average_end": None,
        "transformers_version": transformers_version,
    }


def _parse_int_list(text: str) -> list[int]:
    """Parse "128,256,512" into a list of positive integers (argparse type)."""
    values = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece:
            continue
        try:
            value = int(piece)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid integer {piece!r} in {text!r}; give a comma-separated list such as 128,256,512"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"invalid value {value} in {text!r}; every value must be at least 1")
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"no values in {text!r}; give a comma-separated list such as 128,256,512")
    return values


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Fill unset options from the default or ``--quick`` settings and validate them."""
    defaults = QUICK_DEFAULTS if args.quick else DEFAULTS
    settings = {
        "model_size": args.model_size or defaults["model_size"],
        "lengths": sorted(set(args.lengths or defaults["lengths"])),
        "batch_sizes": sorted(set(args.batch_sizes or defaults["batch_sizes"])),
        "throughput_context": args.throughput_context or defaults["throughput_context"],
        "decode_steps": args.decode_steps,
        "time_budget_s": args.time_budget_s if args.time_budget_s is not None else defaults["time_budget_s"],
        "baseline": args.baseline,
        "quick": args.quick,
        "seed": args.seed,
        "scan_backend": args.scan_backend,
    }
    if settings["baseline"] == "transformers" and importlib.util.find_spec("transformers") is None:
        raise ValueError("--baseline transformers needs the transformers package; install it with "
                         "`pip install transformers` or use --baseline mambakit")
    if settings["decode_steps"] < 1:
        raise ValueError(f"--decode-steps must be at least 1, got {settings['decode_steps']}")
    if settings["time_budget_s"] <= 0:
        raise ValueError(f"--time-budget-s must be positive, got {settings['time_budget_s']}")
    if settings["throughput_context"] < 1:
        raise ValueError(f"--throughput-context must be at least 1, got {settings['throughput_context']}")

    if args.memory_budget_gb is not None:
        if args.memory_budget_gb <= 0:
            raise ValueError(f"--memory-budget-gb must be positive, got {args.memory_budget_gb}")
        settings["memory_budget_bytes"] = int(args.memory_budget_gb * 1e9)
    else:
        # Half of the memory available at start leaves room for the weights, the allocator's
        # slack and whatever else runs on the machine.
        available = _available_memory_bytes()
        if available is None:
            raise ValueError("cannot read the available memory from /proc/meminfo; pass --memory-budget-gb")
        settings["memory_budget_bytes"] = available // 2
    return settings


# Entry points


def run_scaling(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scaling benchmark with parsed ``bench scaling`` options; write and return the results.

    Writes ``results.json`` and the PNG plots to ``args.out`` and prints the tables to stdout.
    """
    settings = resolve_settings(args)
    threads = configure_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but CUDA is not available; use --device cpu")
    # NOTE: only the CPU path has been run. On CUDA the timings synchronize, but the memory
    # budget still uses the estimates and not the CUDA allocator's counters.
    os.makedirs(args.out, exist_ok=True)

    machine = machine_info(device, torch.float32)
    load = machine["load_average_start"]
    if device.type == "cpu" and load is not None and load[0] > 0.5 * machine["usable_cpus"]:
        logger.warning("the 1-minute load average is %.1f on %d CPUs, so other processes compete for the cores "
                       "and the timings will be noisy; --threads 1 is steadier on a shared machine",
                       load[0], machine["usable_cpus"])
    runners = list(build_runners(args, settings, device))
    logger.info("models: %s", ", ".join(f"{r.label} {r.parameters():,} parameters" for r in runners))

    models = {}
    for runner in runners:
        models[runner.name] = {
            "name": runner.name,
            "label": runner.label,
            "implementation": runner.implementation,
            "parameters": runner.parameters(),
            "config": runner.config,
            "stopped_lengths": None,
            "stopped_batch_sizes": None,
            "by_length": [],
            "by_batch_size": [],
        }
        warm_up(runner, device)

    from mambakit.ops.selective_scan import last_backend

    settings["scan_backend"] = last_backend() or settings["scan_backend"]

    total = len(runners) * (len(settings["lengths"]) + len(settings["batch_sizes"])) + DECODE_ROUNDS
    with tqdm(total=total, desc="bench scaling", unit="measurement", disable=not args.progress) as bar:
        run_length_series(runners, models, settings, device, bar)
        run_batch_series(runners, models, settings, device, bar)
    machine["load_average_end"] = _load_average()
    if torch.get_num_threads() != threads:
        logger.warning("torch's thread count changed from %d to %d during the run; the timings mix both",
                       threads, torch.get_num_threads())

    result = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "scaling",
        "weights": "random",
        "machine": machine,
        "settings": settings,
        "models": models,
        "summary": summarize(models),
    }
    path = os.path.join(args.out, "results.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
        handle.write("\n")

    print(f"Scaling benchmark, random weights; {machine['cpu_model']}, {threads} thread{'s' if threads != 1 else ''}, "
          f"torch {machine['torch_version']}, {machine['device']} float32")
    for runner in runners:
        print(f"  {runner.label}: {runner.parameters():,} parameters, {runner.implementation}")
    print(format_tables(result))
    acceptance = result["summary"]["acceptance"]
    transformer_summary = result["summary"]["transformer"]
    print(f"time per token, longest over shortest context, median (min): "
          f"Mamba {_format(acceptance['mamba_decode_ratio'])} ({_format(acceptance['mamba_decode_ratio_min'])}), "
          f"limit {MAMBA_DECODE_RATIO_LIMIT}; Transformer {_format(transformer_summary['decode_ratio'])} "
          f"({_format(transformer_summary['decode_ratio_min'])})")
    if args.plots:
        written = write_plots(result, args.out)
        if written:
            print("plots: " + ", ".join(written))
    print(f"results: {path}")
    return result


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``bench scaling`` to ``parser``."""
    parser.add_argument("--model-size", choices=sorted(MODEL_SIZES), default=None,
                        help="Mamba shape: 130m (d_model 768, 24 layers), 370m (1024, 48) or tiny (256, 4, "
                             "vocabulary 8192) (default 130m, tiny with --quick)")
    parser.add_argument("--lengths", type=_parse_int_list, default=None,
                        help="comma-separated prompt and context lengths in tokens "
                             "(default 128,256,...,16384; 128,...,8192 with --quick)")
    parser.add_argument("--batch-sizes", type=_parse_int_list, default=None,
                        help="comma-separated batch sizes for the throughput series (default 1,4,16,64)")
    parser.add_argument("--throughput-context", type=int, default=None,
                        help="context length in tokens for the throughput series (default 1024; 256 with --quick)")
    parser.add_argument("--decode-steps", type=int, default=16,
                        help="single-token steps timed per context length or batch size, rounded up to a multiple "
                             "of 4 for context lengths; the median is reported (default 16)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, lengths up to 8192, throughput at context 256 and a 10 s time budget; "
                             "about a minute on two cores")
    parser.add_argument("--out", default=os.path.join("out", "bench-scaling"),
                        help="folder for results.json and the plots (default out/bench-scaling)")
    parser.add_argument("--time-budget-s", type=float, default=None,
                        help="stop a model after a prefill (or a series of steps) longer than this many "
                             "seconds (default 60; 10 with --quick)")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="skip measurements whose estimated state and activation memory exceeds this many "
                             "GB (10^9 bytes) (default: half of the memory available at start)")
    parser.add_argument("--baseline", choices=["mambakit", "transformers"], default="mambakit",
                        help="Transformer implementation: this library's TransformerLM or transformers' "
                             "GPTNeoXForCausalLM (default mambakit)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch and of the numba scan (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and tokens (default 0)")
    parser.add_argument("--scan-backend", default="auto", choices=["auto", "reference", "cpu"],
                        help="Mamba selective-scan backend (default auto)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write no PNG plots")

    # Shape overrides for tests and experiments; hidden from --help.
    parser.add_argument("--d-model", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n-layer", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-size", type=int, default=None, help=argparse.SUPPRESS)


def _command_scaling(args: argparse.Namespace) -> int:
    run_scaling(args)
    return 0


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` command and its ``scaling`` subcommand to ``subparsers``.

    The ``scaling`` parser sets ``handler`` to a function that runs the benchmark and returns 0.
    """
    bench = subparsers.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", required=True)
    scaling = bench_commands.add_parser(
        "scaling",
        help="Mamba vs a Transformer of the same size: prefill, decode, memory and throughput as the context grows",
    )
    add_scaling_arguments(scaling)
    scaling.set_defaults(handler=_command_scaling)
    return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mambakit.bench.scaling",
        description="Mamba vs a Transformer of the same size: prefill, decode, memory and throughput.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log each stop and the model sizes")
    add_scaling_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        run_scaling(args)
    except (ValueError, ImportError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
