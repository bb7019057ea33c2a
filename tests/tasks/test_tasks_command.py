"""The ``tasks`` command parser, its handler's table and JSON, and the accuracy plot."""

import argparse
import json

import numba
import pytest
import torch

from mambakit.tasks import add_tasks_parser
from mambakit.tasks.cli import COMMANDS, parse_lengths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mambakit")
    add_tasks_parser(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture
def restore_threads():
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_threads)
    numba.set_num_threads(numba_threads)


def test_tasks_parser_defaults():
    args = _parser().parse_args(["tasks", "induction-heads"])
    defaults = COMMANDS["induction-heads"]
    assert args.task_name == "induction-heads"
    assert args.mixer == "both"
    assert args.steps == defaults.steps
    assert args.seq_len == defaults.seq_len
    assert args.eval_lengths == list(defaults.eval_lengths)
    # Induction Heads is evaluated at 16 and 32 times its training length.
    assert max(args.eval_lengths) == 32 * args.seq_len
    assert args.weight_decay == defaults.weight_decay
    assert args.seed == 0
    assert callable(args.handler)


def test_tasks_parser_options():
    args = _parser().parse_args(
        ["tasks", "selective-copying", "--mixer", "s4d", "--steps", "7", "--seq-len", "32",
         "--seed", "3", "--eval-lengths", "32, 64", "--weight-decay", "0", "--no-gate", "--log-every", "5"]
    )
    assert args.task_name == "selective-copying"
    assert (args.mixer, args.steps, args.seq_len, args.seed) == ("s4d", 7, 32, 3)
    assert args.eval_lengths == [32, 64]
    assert args.weight_decay == 0.0
    assert args.no_gate is True
    assert args.log_every == 5


def test_tasks_parser_rejects_bad_values(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["tasks", "induction-heads", "--mixer", "attention"])
    with pytest.raises(SystemExit):
        _parser().parse_args(["tasks", "induction-heads", "--eval-lengths", "256,big"])
    assert "invalid length 'big'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parser().parse_args(["tasks"])


@pytest.mark.parametrize(
    "option, value, message",
    [("--steps", "0", "value must be at least 1, got 0"), ("--log-every", "-5", "value must be at least 1, got -5"),
     ("--d-model", "wide", "invalid whole number 'wide'"), ("--lr", "0", "value must be above 0, got 0"),
     ("--weight-decay", "-1", "value must be 0 or more, got -1"), ("--weight-decay", "nan", "value must be 0 or more"),
     ("--lr", "fast", "invalid number 'fast'")],
)
def test_tasks_parser_rejects_bad_numbers(capsys, option, value, message):
    with pytest.raises(SystemExit):
        _parser().parse_args(["tasks", "selective-copying", option, value])
    error = capsys.readouterr().err
    assert option in error
    assert message in error


def test_parse_lengths_rejects_zero():
    with pytest.raises(argparse.ArgumentTypeError, match="length must be positive, got 0"):
        parse_lengths("0")


def test_tasks_command_prints_table(tmp_path, capsys, restore_threads):
    output = tmp_path / "results.json"
    args = _parser().parse_args(
        ["tasks", "induction-heads", "--steps", "2", "--seq-len", "12", "--eval-lengths", "24",
         "--batch-size", "4", "--eval-samples", "8", "--threads", "1", "--no-progress",
         "--json", str(output)]
    )
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "induction-heads: trained at length 12" in printed
    assert "acc@12" in printed
    assert "acc@24" in printed
    rows = [line.split()[0] for line in printed.splitlines()[2:]]
    assert rows == ["mamba", "s4d"]

    record = json.loads(output.read_text())
    assert record["task"]["name"] == "induction-heads"
    assert [result["mixer"] for result in record["results"]] == ["mamba", "s4d"]
    assert set(record["results"][0]["eval_accuracy"]) == {"12", "24"}
    assert [entry["step"] for entry in record["results"][0]["history"]] == [1, 2]
    assert record["results"][0]["gated"] is True


def test_tasks_command_no_gate(capsys, restore_threads):
    args = _parser().parse_args(
        ["tasks", "selective-copying", "--mixer", "s4d", "--no-gate", "--steps", "1", "--seq-len", "16",
         "--batch-size", "2", "--eval-samples", "2", "--threads", "1", "--no-progress"]
    )
    assert args.handler(args) == 0
    assert "s4d (no gate)" in capsys.readouterr().out


def test_plot_writes_small_png(tmp_path, capsys, restore_threads):
    pytest.importorskip("matplotlib")
    from mambakit.tasks.plot import main as plot_main

    files = []
    runs = [
        ("selective-copying", ["--seq-len", "16"]),
        ("selective-copying", ["--seq-len", "16", "--no-gate"]),
        ("induction-heads", ["--seq-len", "8"]),
        ("induction-heads", ["--seq-len", "8", "--seed", "1"]),
    ]
    for index, (name, extra) in enumerate(runs):
        path = tmp_path / f"{index}-{name}.json"
        args = _parser().parse_args(
            ["tasks", name, "--steps", "1", "--batch-size", "2", "--eval-samples", "2",
             "--eval-lengths", "", "--threads", "1", "--no-progress", "--json", str(path), *extra]
        )
        args.handler(args)
        files.append(str(path))
    image = tmp_path / "accuracy.png"
    assert plot_main([*files, "--out", str(image)]) == 0
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.stat().st_size < 150_000
    # Runs of the same task and length share a panel: two panels of 4.5 inches at 80 dpi.
    assert int.from_bytes(data[16:20], "big") == 720
