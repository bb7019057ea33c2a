"""The scaling benchmark on a very small model: results.json schema, stops and plots. No timing checks."""

import argparse
import json
import logging
import os
import sys

import pytest

from mambakit.bench.scaling import SCHEMA_VERSION, add_bench_parser, run_scaling

LENGTHS = [16, 32]
BATCH_SIZES = [1, 2]


def parse(out_dir, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mambakit")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args([
        "bench", "scaling", "--quick",
        "--lengths", ",".join(map(str, LENGTHS)),
        "--batch-sizes", ",".join(map(str, BATCH_SIZES)),
        "--throughput-context", "8",
        "--decode-steps", "4",
        "--d-model", "64", "--n-layer", "1", "--vocab-size", "256",
        "--memory-budget-gb", "4",
        "--threads", "1",
        "--no-progress",
        "--out", str(out_dir),
        *extra,
    ])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("scaling")
    result = run_scaling(parse(out_dir))
    return out_dir, result


def test_results_json_written_and_returned(tiny_run):
    out_dir, result = tiny_run
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as handle:
        written = json.load(handle)
    assert written == json.loads(json.dumps(result))


def test_top_level_schema(tiny_run):
    _, result = tiny_run
    assert result["schema_version"] == SCHEMA_VERSION
    assert result["benchmark"] == "scaling"
    assert result["weights"] == "random"
    assert set(result["models"]) == {"mamba", "transformer"}

    machine = result["machine"]
    for key in ("cpu_model", "torch_version", "date", "device", "dtype", "platform", "python_version"):
        assert isinstance(machine[key], str) and machine[key], key
    assert machine["torch_threads"] == 1
    assert isinstance(machine["logical_cpus"], int)

    settings = result["settings"]
    assert settings["lengths"] == LENGTHS
    assert settings["batch_sizes"] == BATCH_SIZES
    assert settings["model_size"] == "tiny"
    assert settings["baseline"] == "mambakit"
    assert settings["memory_budget_bytes"] == 4_000_000_000
    assert settings["quick"] is True


def test_models_describe_themselves(tiny_run):
    _, result = tiny_run
    for name, record in result["models"].items():
        assert record["name"] == name
        assert isinstance(record["label"], str)
        assert isinstance(record["implementation"], str)
        assert isinstance(record["parameters"], int) and record["parameters"] > 0
        assert record["config"]["d_model"] == 64
        assert record["config"]["vocab_size"] == 256
        assert record["stopped_lengths"] is None
        assert record["stopped_batch_sizes"] is None


def test_one_measured_entry_per_length(tiny_run):
    _, result = tiny_run
    for name, record in result["models"].items():
        entries = record["by_length"]
        assert [entry["length"] for entry in entries] == LENGTHS, name
        for entry in entries:
            assert entry["status"] == "measured"
            assert isinstance(entry["prefill_seconds"], float) and entry["prefill_seconds"] > 0
            assert entry["prefill_runs"] >= 1
            assert len(entry["decode_step_seconds"]) == 4
            assert entry["decode_seconds_per_token_min"] <= entry["decode_seconds_per_token"]
            assert isinstance(entry["state_bytes"], int)
            assert isinstance(entry["state_allocated_bytes"], int)
            assert isinstance(entry["estimated_peak_bytes"], int)


def test_one_measured_entry_per_batch_size(tiny_run):
    _, result = tiny_run
    for name, record in result["models"].items():
        entries = record["by_batch_size"]
        assert [entry["batch_size"] for entry in entries] == BATCH_SIZES, name
        for entry in entries:
            assert entry["status"] == "measured"
            assert entry["context"] == 8
            assert len(entry["step_seconds"]) == 4
            assert entry["tokens_per_second"] == pytest.approx(entry["batch_size"] / entry["seconds_per_step"])


def test_mamba_state_constant_across_lengths(tiny_run):
    _, result = tiny_run
    sizes = {entry["state_bytes"] for entry in result["models"]["mamba"]["by_length"]}
    assert len(sizes) == 1
    assert result["summary"]["mamba"]["state_memory_ratio"] == 1.0
    assert result["summary"]["acceptance"]["mamba_state_constant"] is True


def test_transformer_kv_bytes_grow_linearly(tiny_run):
    _, result = tiny_run
    short, long = result["models"]["transformer"]["by_length"]
    assert long["state_bytes"] == short["state_bytes"] * long["length"] // short["length"]
    # 2 tensors x layers x d_model x 4 bytes per token, times the 16 tokens of the short prompt.
    n_layer = result["models"]["transformer"]["config"]["n_layer"]
    assert short["state_bytes"] == 2 * n_layer * 64 * 4 * 16


def test_throughput_state_grows_with_batch(tiny_run):
    _, result = tiny_run
    for name, record in result["models"].items():
        one, two = record["by_batch_size"]
        assert two["state_bytes"] == 2 * one["state_bytes"], name


def test_summary_keys(tiny_run):
    _, result = tiny_run
    for name in ("mamba", "transformer"):
        item = result["summary"][name]
        assert item["shortest_context"] == LENGTHS[0]
        assert item["longest_context"] == LENGTHS[-1]
        assert isinstance(item["decode_ratio"], float)
        assert isinstance(item["prefill_exponent_last_doubling"], float)
    acceptance = result["summary"]["acceptance"]
    assert acceptance["mamba_decode_ratio_limit"] == 1.15
    assert isinstance(acceptance["mamba_decode_within_limit"], bool)


def test_plots_written(tiny_run):
    pytest.importorskip("matplotlib")
    out_dir, _ = tiny_run
    for name in ("prefill", "decode", "memory", "throughput"):
        path = os.path.join(out_dir, f"scaling_{name}.png")
        assert os.path.getsize(path) > 1000, path


def test_memory_budget_stops_every_length(tmp_path):
    result = run_scaling(parse(tmp_path, "--memory-budget-gb", "1e-9", "--no-plots"))
    for record in result["models"].values():
        assert record["stopped_lengths"] == {"reason": "stopped: memory", "at": LENGTHS[0]}
        assert [entry["status"] for entry in record["by_length"]] == ["stopped: memory"] * len(LENGTHS)
        assert all(entry["prefill_seconds"] is None for entry in record["by_length"])
        assert [entry["status"] for entry in record["by_batch_size"]] == ["stopped: memory"] * len(BATCH_SIZES)
    assert result["summary"]["mamba"]["decode_ratio"] is None
    assert result["summary"]["acceptance"]["mamba_decode_within_limit"] is False


def test_time_budget_keeps_first_length_only(tmp_path):
    result = run_scaling(parse(tmp_path, "--time-budget-s", "1e-9", "--no-plots"))
    for record in result["models"].values():
        assert record["stopped_lengths"] == {"reason": "stopped: time budget", "at": LENGTHS[0]}
        statuses = [entry["status"] for entry in record["by_length"]]
        assert statuses == ["measured", "stopped: time budget"]
        # The measured length still gets its decode samples.
        assert record["by_length"][0]["decode_seconds_per_token"] is not None
        assert [entry["status"] for entry in record["by_batch_size"]] == ["measured", "stopped: time budget"]


def test_missing_matplotlib_skips_plots(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with caplog.at_level(logging.WARNING, logger="mambakit.bench.scaling"):
        run_scaling(parse(tmp_path, "--lengths", "16", "--batch-sizes", "1"))
    assert not any(name.endswith(".png") for name in os.listdir(tmp_path))
    assert os.path.isfile(tmp_path / "results.json")
    messages = [record.getMessage() for record in caplog.records if "matplotlib" in record.getMessage()]
    assert len(messages) == 1


def test_transformers_baseline_runs(tmp_path):
    pytest.importorskip("transformers")
    result = run_scaling(parse(tmp_path, "--baseline", "transformers", "--no-plots"))
    record = result["models"]["transformer"]
    assert "GPTNeoXForCausalLM" in record["implementation"]
    assert result["settings"]["baseline"] == "transformers"
    short, long = record["by_length"]
    assert long["state_bytes"] == 2 * short["state_bytes"]


@pytest.mark.parametrize("text", ["16,abc", "0,16", ","])
def test_invalid_lengths_rejected(tmp_path, text, capsys):
    with pytest.raises(SystemExit):
        parse(tmp_path, "--lengths", text)
    assert "--lengths" in capsys.readouterr().err


def test_invalid_decode_steps_rejected(tmp_path):
    with pytest.raises(ValueError, match="--decode-steps"):
        run_scaling(parse(tmp_path, "--decode-steps", "0"))
