"""Command line of the synthetic tasks: ``tasks selective-copying`` and ``tasks induction-heads``.

``add_tasks_parser(subparsers)`` adds a ``tasks`` command to an ``argparse`` parser. Each task
command trains the chosen mixers with ``runner.train_task`` and prints a table of accuracies.
The handler is stored as ``handler`` in the parsed arguments and returns an exit status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandDefaults:
    """Defaults of one task command."""

    help: str
    steps: int
    seq_len: int
    eval_lengths: tuple[int, ...]
    batch_size: int
    lr: float
    weight_decay: float


# The defaults are the runs recorded in docs/concepts/selection.md, 10 to 30 minutes of one
# CPU core for both mixers.
COMMANDS = {
    "selective-copying": CommandDefaults(
        help="copy 16 data tokens scattered among noise tokens, in order",
        steps=8000,
        seq_len=64,
        eval_lengths=(),
        batch_size=32,
        lr=3e-3,
        weight_decay=0.1,
    ),
    # With weight decay 0.1 none of four runs held 0.95 accuracy at 16 times the training
    # length. Without it, two of four runs of 4000 steps that learned did, and both runs of
    # 8000 steps did.
    "induction-heads": CommandDefaults(
        help="recall the token after a trigger token; evaluate at longer lengths",
        steps=8000,
        seq_len=256,
        eval_lengths=(256, 512, 1024, 2048, 4096, 8192),
        batch_size=32,
        lr=3e-3,
        weight_decay=0.0,
    ),
}


def parse_lengths(text: str) -> list[int]:
    """Parse a comma-separated list of positive lengths such as ``256,1024,4096``."""
    lengths = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            length = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"invalid length {item!r}; give whole numbers separated by commas, e.g. 256,1024"
            ) from None
        if length < 1:
            raise argparse.ArgumentTypeError(f"length must be positive, got {length}")
        lengths.append(length)
    return lengths


def positive_int(text: str) -> int:
    """Parse a whole number of at least 1, for counts and sizes such as ``--steps``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"value must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """Parse a number above 0, such as a learning rate."""
    value = _parse_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"value must be above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """Parse a number of at least 0, such as a weight decay."""
    value = _parse_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"value must be 0 or more, got {text}")
    return value


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None


def add_tasks_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tasks`` command and its task subcommands to ``subparsers``; return ``tasks``."""
    tasks = subparsers.add_parser(
        "tasks", help="train small models on the Mamba paper's synthetic tasks"
    )
    task_commands = tasks.add_subparsers(dest="task_command", required=True)
    for name, defaults in COMMANDS.items():
        command = task_commands.add_parser(name, help=defaults.help)
        command.add_argument(
            "--mixer", choices=["mamba", "s4d", "both"], default="both",
            help="sequence mixer: selective (mamba), LTI (s4d) or both in turn (default both)",
        )
        command.add_argument(
            "--steps", type=positive_int, default=defaults.steps,
            help=f"optimizer steps per mixer, one fresh batch each (default {defaults.steps})",
        )
        command.add_argument(
            "--seq-len", type=positive_int, default=defaults.seq_len,
            help=f"training length in tokens; the context length for selective copying "
            f"(default {defaults.seq_len})",
        )
        command.add_argument("--seed", type=int, default=0, help="seed of weights and data (default 0)")
        command.add_argument(
            "--eval-lengths", type=parse_lengths, default=list(defaults.eval_lengths),
            help="comma-separated lengths to evaluate the trained model at, besides the training "
            f"length (default {','.join(map(str, defaults.eval_lengths)) or 'none'})",
        )
        command.add_argument(
            "--batch-size", type=positive_int, default=defaults.batch_size,
            help=f"sequences per step (default {defaults.batch_size})",
        )
        command.add_argument(
            "--lr", type=positive_float, default=defaults.lr, help=f"peak AdamW learning rate (default {defaults.lr})"
        )
        command.add_argument(
            "--eval-samples", type=positive_int, default=256, help="held-out sequences per length (default 256)"
        )
        command.add_argument(
            "--no-gate", action="store_true",
            help="drop the mixers' gate branch, as in the 'no gate' rows of the Mamba paper (Gu and Dao, 2023)",
        )
        command.add_argument(
            "--weight-decay", type=non_negative_float, default=defaults.weight_decay,
            help="AdamW weight decay of the weight matrices; A, D, Δ, biases and norms get none "
            f"(default {defaults.weight_decay})",
        )
        command.add_argument("--d-model", type=positive_int, default=64, help="model width (default 64)")
        command.add_argument("--n-layer", type=positive_int, default=2, help="residual blocks (default 2)")
        command.add_argument(
            "--log-every", type=positive_int, default=None,
            help="steps between learning-curve entries, logged with -v and kept in --json "
            "(default: about 50 per run)",
        )
        command.add_argument(
            "--threads", type=int, default=None,
            help="CPU threads for torch and the numba scan (default: leave both as they are)",
        )
        command.add_argument("--json", metavar="PATH", help="also write the results to this JSON file")
        command.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        command.set_defaults(handler=run_tasks_command, task_name=name)
    return tasks


def set_threads(threads: int) -> None:
    """Set the CPU threads of torch and of numba's parallel kernels."""
    import numba
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    # numba.set_num_threads raises ValueError above NUMBA_NUM_THREADS, the size of its pool.
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def format_table(results: list) -> str:
    """Return the results as a plain-text table, one row per mixer."""
    lengths = sorted({length for result in results for length in result.eval_accuracy})
    header = ["mixer", "parameters", "steps", "train s", "loss"] + [f"acc@{n}" for n in lengths]
    rows = [header]
    for result in results:
        row = [
            result.mixer if result.gated else f"{result.mixer} (no gate)",
            str(result.num_parameters),
            str(result.steps),
            f"{result.train_seconds:.1f}",
            f"{result.final_loss:.3f}",
        ]
        row += [
            f"{result.eval_accuracy[n]:.3f}" if n in result.eval_accuracy else "-" for n in lengths
        ]
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def run_tasks_command(args: argparse.Namespace) -> int:
    """Train the mixers asked for on one task, print the table and optionally write JSON."""
    from mambakit.tasks.runner import build_task, train_task

    if args.threads is not None:
        set_threads(args.threads)
    task = build_task(args.task_name, args.seq_len)
    mixers = ["mamba", "s4d"] if args.mixer == "both" else [args.mixer]

    results = []
    for mixer in mixers:
        result = train_task(
            task,
            mixer,
            args.steps,
            gated=not args.no_gate,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            seed=args.seed,
            eval_lengths=args.eval_lengths,
            eval_samples=args.eval_samples,
            d_model=args.d_model,
            n_layer=args.n_layer,
            progress=not args.no_progress,
            log_every=args.log_every,
        )
        results.append(result)

    print(f"{task.name}: trained at length {task.seq_len}, chance accuracy {task.chance_accuracy:.3f}")
    print(format_table(results))
    if args.json:
        record = {
            "task": dataclasses.asdict(task) | {"name": task.name},
            "settings": {
                key: value
                for key, value in vars(args).items()
                if key not in ("handler", "json", "no_progress")
            },
            "results": [dataclasses.asdict(result) for result in results],
        }
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
        logger.info("wrote %s", args.json)
    return 0
