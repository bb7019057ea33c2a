"""Time whole Mamba models on CPU: prefill, decode and a training step, against peers, in one process.

Contenders share identical random weights (timing does not depend on the values):

* ``mambakit``: this library with ``backend="auto"`` (the numba kernels on CPU).
* ``transformers``: ``MambaForCausalLM``, which on CPU runs its pure-PyTorch scan.
* ``mambapy``: ``mambapy.mamba.Mamba`` (parallel scan for full sequences, its ``step`` for
  decoding) wrapped with the same embedding, final norm and tied head.
* ``floor``: this library's model with the scan and the convolution removed, leaving the
  embedding, the projections, the norms and the LM head. No implementation can beat it, so
  every contender is reported as a ratio to it.

Cases (all fp32, batch 1 unless stated):

* ``prefill``: a full forward pass with logits at every position, mamba-130m shapes.
* ``decode``: tokens/s of single-token steps after a prompt of 32 or 1024 tokens, at batch 1
  and batch 64, mamba-130m shapes.
* ``train``: one step of forward + backward + AdamW, d_model 256, 4 layers, vocabulary 4096,
  batch 4, at lengths 256 and 1024.

Usage::

    python benchmarks/bench_model.py [--cases prefill decode train] [--lengths 128 512 2048]
                                     [--train-lengths 256 1024] [--repeats 3] [--json out.json]

Times are medians over ``--repeats`` runs after one warm-up run. "peak MiB" is the growth of the
process's peak resident memory (VmHWM, reset through /proc/self/clear_refs) during the timed
runs; it is an estimate, because the allocator may reuse memory freed earlier.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambakit import Mamba, MambaConfig, parameter_groups
from mambakit.ops.selective_scan import last_backend

SIZES = {
    "130m": dict(d_model=768, n_layer=24, vocab_size=50280),
    "train": dict(d_model=256, n_layer=4, vocab_size=4096),
}


# Machine facts and memory


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}


def _reset_peak_memory() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _peak_memory_mib() -> float | None:
    try:
        for line in open("/proc/self/status", encoding="utf-8"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(function, repeats: int) -> dict:
    """Run ``function`` once to warm up, then ``repeats`` times; return median seconds and peak memory."""
    function()
    before = _peak_memory_mib() if _reset_peak_memory() else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    after = _peak_memory_mib()
    peak = None if before is None or after is None else max(after - before, 0.0)
    return {"seconds": statistics.median(times), "peak_mib": peak}


# Contenders


class FloorMixer(nn.Module):
    """The Mamba mixer's matrix multiplications alone: no convolution, no scan."""

    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        self.mixer = mixer

    def _mix(self, hidden):
        mixer = self.mixer
        x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
        dt, B, C = torch.split(mixer.x_proj(x), [mixer.config.dt_rank, mixer.config.d_state, mixer.config.d_state], -1)
        dt = mixer.dt_proj(dt)
        # Touch dt, B and C so their projections are not dead code; the cost is one elementwise pass.
        y = x * F.silu(z) + dt * (B.sum(-1, keepdim=True) + C.sum(-1, keepdim=True))
        return mixer.out_proj(y)

    def forward(self, hidden, cache=None, attention_mask=None, backend="auto"):
        return self._mix(hidden)

    def step(self, hidden, cache, backend="auto"):
        return self._mix(hidden)


def build_floor(model: Mamba) -> Mamba:
    floor = Mamba(model.config)
    floor.load_state_dict(model.state_dict())
    for layer in floor.backbone.layers:
        layer.mixer = FloorMixer(layer.mixer)
    return floor.eval()


def build_transformers(model: Mamba):
    try:
        import transformers
    except ImportError:
        return None
    config = model.config
    hf_config = transformers.MambaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layer,
        state_size=config.d_state, conv_kernel=config.d_conv, expand=config.expand, time_step_rank=config.dt_rank,
    )
    hf_model = transformers.MambaForCausalLM(hf_config)
    state = model.state_dict()
    state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
    hf_model.load_state_dict(state)
    return hf_model.eval()


class MambapyLM(nn.Module):
    """mambapy's residual blocks between this library's embedding, final norm and tied head."""

    def __init__(self, model: Mamba, parallel_scan: bool = True) -> None:
        super().__init__()
        from mambapy import mamba

        config = model.config
        self.embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.embedding.load_state_dict(model.backbone.embedding.state_dict())
        self.blocks = mamba.Mamba(mamba.MambaConfig(
            d_model=config.d_model, n_layers=config.n_layer, d_state=config.d_state, expand_factor=config.expand,
            d_conv=config.d_conv, dt_rank=config.dt_rank, pscan=parallel_scan,
        ))
        blocks = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.layers.")}
        self.blocks.load_state_dict(blocks)
        self.norm_f = model.backbone.norm_f.__class__(config.d_model, eps=config.norm_epsilon)
        self.norm_f.load_state_dict(model.backbone.norm_f.state_dict())
        self.config = config

    def forward(self, input_ids):
        return F.linear(self.norm_f(self.blocks(self.embedding(input_ids))), self.embedding.weight)

    def new_caches(self, batch: int):
        config = self.config
        return [
            (torch.zeros(batch, config.d_inner, config.d_state), torch.zeros(batch, config.d_inner, config.d_conv - 1))
            for _ in range(config.n_layer)
        ]

    def step(self, ids, caches):
        hidden, caches = self.blocks.step(self.embedding(ids), caches)
        return F.linear(self.norm_f(hidden), self.embedding.weight), caches


def contenders(model: Mamba, names: list[str]) -> dict:
    built = {"mambakit": model, "floor": build_floor(model)}
    if "transformers" in names:
        hf_model = build_transformers(model)
        if hf_model is not None:
            built["transformers"] = hf_model
    if "mambapy" in names:
        try:
            built["mambapy"] = MambapyLM(model).eval()
        except ImportError:
            pass
    return {name: built[name] for name in names if name in built}


def _logits(name: str, module, input_ids):
    if name == "transformers":
        return module(input_ids).logits
    return module(input_ids)


# Cases


def run_prefill(lengths: list[int], names: list[str], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(**SIZES["130m"])).eval()
    rows = []
    for name, module in contenders(model, names).items():
        for length in lengths:
            input_ids = torch.randint(0, 50000, (1, length))
            with torch.no_grad():
                result = measure(lambda: _logits(name, module, input_ids), repeats)
            rows.append({"case": "prefill", "contender": name, "length": length, **result})
            print(f"prefill {name:13s} L={length:6d} {result['seconds']:8.3f} s", flush=True)
    return rows


def _decode_seconds_per_token(name, module, batch, context, steps) -> float:
    prompt = torch.randint(0, 50000, (batch, context))
    token = torch.randint(0, 50000, (batch,))
    with torch.no_grad():
        if name in ("mambakit", "floor"):
            cache = module.allocate_cache(batch)
            module(prompt, cache=cache, last_only=True)
            module.step(token, cache)
            start = time.perf_counter()
            for _ in range(steps):
                module.step(token, cache)
            return (time.perf_counter() - start) / steps
        if name == "mambapy":
            # mambapy has no cached prefill; its step cost does not depend on the context.
            caches = module.new_caches(batch)
            _, caches = module.step(token, caches)
            start = time.perf_counter()
            for _ in range(steps):
                _, caches = module.step(token, caches)
            return (time.perf_counter() - start) / steps
        # transformers: cached forward calls, one token each, as generate() makes them. Timing
        # generate() for n + 1 tokens minus generate() for 1 left the prefill's noise in the
        # difference, which went negative after a 1024-token prompt.
        # transformers 5.x names the cache argument and output "cache". Earlier versions use
        # "cache_params", which 5.x still accepts with a deprecation warning.
        key = "cache" if "cache" in inspect.signature(module.forward).parameters else "cache_params"

        def forward(ids, cache, position):
            output = module(ids, use_cache=True, cache_position=torch.tensor([position]), **{key: cache})
            return output[key]

        cache = module(prompt, use_cache=True)[key]
        cache = forward(token[:, None], cache, context)
        start = time.perf_counter()
        for position in range(context + 1, context + 1 + steps):
            cache = forward(token[:, None], cache, position)
        return (time.perf_counter() - start) / steps


def run_decode(names: list[str], repeats: int, steps: int) -> list[dict]:
    torch.manual_seed(0)
    model = Mamba(MambaConfig(**SIZES["130m"])).eval()
    rows = []
    for name, module in contenders(model, names).items():
        for batch, context in [(1, 32), (1, 1024), (64, 32)]:
            if name == "mambapy" and context != 32:
                continue
            times = [_decode_seconds_per_token(name, module, batch, context, steps) for _ in range(repeats)]
            seconds = statistics.median(times)
            row = {"case": "decode", "contender": name, "batch": batch, "context": context,
                   "seconds_per_step": seconds, "tokens_per_second": batch / seconds}
            rows.append(row)
            print(f"decode  {name:13s} b={batch:3d} ctx={context:5d} {row['tokens_per_second']:8.1f} tok/s", flush=True)
    return rows


def run_train(lengths: list[int], names: list[str], repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        torch.manual_seed(0)
        model = Mamba(MambaConfig(**SIZES["train"]))
        for name, module in contenders(model, names).items():
            if name == "transformers" and length > 256:
                continue  # its sequential scan takes minutes per step here
            module.train()
            optimizer = torch.optim.AdamW(parameter_groups(module, 0.1) if name != "transformers"
                                          else module.parameters(), lr=1e-4)
            input_ids = torch.randint(0, 4096, (4, length))

            def step():
                logits = _logits(name, module, input_ids)
                loss = F.cross_entropy(logits.flatten(0, 1), input_ids.flatten())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            result = measure(step, repeats)
            rows.append({"case": "train", "contender": name, "length": length, **result})
            print(f"train   {name:13s} L={length:6d} {result['seconds']:8.3f} s  peak {result['peak_mib']} MiB", flush=True)
    return rows


def run_long(prefill_length: int, train_length: int) -> list[dict]:
    """Peak memory of a long prefill and a long training step of the small model, mambakit only."""
    torch.manual_seed(0)
    model = Mamba(MambaConfig(**SIZES["train"]))
    rows = []

    model.eval()
    input_ids = torch.randint(0, 4096, (1, prefill_length))
    with torch.no_grad():
        result = measure(lambda: model(input_ids, last_only=True), 1)
    rows.append({"case": "long-prefill", "contender": "mambakit", "length": prefill_length, **result})
    print(f"long    prefill L={prefill_length} {result['seconds']:.2f} s  peak {result['peak_mib']} MiB", flush=True)

    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-4)
    input_ids = torch.randint(0, 4096, (1, train_length))

    def step():
        loss = F.cross_entropy(model(input_ids).flatten(0, 1), input_ids.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result = measure(step, 1)
    rows.append({"case": "long-train", "contender": "mambakit", "length": train_length, **result})
    print(f"long    train   L={train_length} {result['seconds']:.2f} s  peak {result['peak_mib']} MiB", flush=True)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Add each row's ratio to the floor row of the same case and shape."""
    def key(row):
        return (row["case"], row.get("length"), row.get("batch"), row.get("context"))

    floors = {key(r): r for r in rows if r["contender"] == "floor"}
    for row in rows:
        floor = floors.get(key(row))
        if floor is None:
            continue
        if "seconds" in row:
            row["ratio_to_floor"] = row["seconds"] / floor["seconds"]
        else:
            row["ratio_to_floor"] = row["tokens_per_second"] / floor["tokens_per_second"]


def print_table(rows: list[dict]) -> None:
    print("\n| case | contender | shape | time | ratio to floor | peak MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        if row["case"] == "decode":
            shape = f"batch {row['batch']}, after {row['context']}"
            value = f"{row['tokens_per_second']:.1f} tok/s"
        else:
            shape = f"length {row['length']}"
            value = f"{row['seconds']:.3f} s"
        ratio = row.get("ratio_to_floor")
        peak = row.get("peak_mib")
        print(f"| {row['case']} | {row['contender']} | {shape} | {value} | "
              f"{'' if ratio is None else f'{ratio:.2f}x'} | {'' if peak is None else f'{peak:.0f}'} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=["prefill", "decode", "train"],
                        choices=["prefill", "decode", "train", "long"],
                        help="long: peak memory of a 65,536-token prefill and a 16,384-token training step")
    parser.add_argument("--contenders", nargs="+", default=["mambakit", "floor", "transformers", "mambapy"])
    parser.add_argument("--lengths", nargs="+", type=int, default=[128, 512, 2048], help="prefill lengths in tokens")
    parser.add_argument("--train-lengths", nargs="+", type=int, default=[256, 1024], help="training lengths in tokens")
    parser.add_argument("--decode-steps", type=int, default=16, help="timed single-token steps per decode measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is reported")
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)

    rows = []
    if "prefill" in args.cases:
        rows += run_prefill(args.lengths, args.contenders, args.repeats)
    if "decode" in args.cases:
        rows += run_decode(args.contenders, args.repeats, args.decode_steps)
    if "train" in args.cases:
        rows += run_train(args.train_lengths, args.contenders, args.repeats)
    if "long" in args.cases:
        rows += run_long(65536, 16384)
    add_ratios(rows)
    record = {"machine": machine_info(), "scan_backend": last_backend(), "args": vars(args) | {"json": str(args.json)},
              "results": rows}
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(record, indent=2))
    print(json.dumps(record["machine"]))


if __name__ == "__main__":
    main()
