"""Training metrics: the ``metrics.jsonl`` log and the loss plot drawn from it."""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)


def write_metrics(path: str, record: dict) -> None:
    """Append ``record`` to the JSON-lines file at ``path``."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: str, last_step: int) -> None:
    """Drop the records after ``last_step``, logged before a crash by steps that a resume repeats."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip() and json.loads(line).get("step", 0) <= last_step]
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    os.replace(temporary, path)


def plot_losses(metrics_path: str, image_path: str) -> None:
    """Draw the loss curve when matplotlib is installed; training never depends on it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed; skipping %s", image_path)
        return
    if not os.path.exists(metrics_path):
        return
    records = [json.loads(line) for line in open(metrics_path, encoding="utf-8")]
    train_points = [(r["step"], r["loss"]) for r in records if "loss" in r]
    validation_points = [(r["step"], r["validation_loss"]) for r in records if "validation_loss" in r]
    figure, axes = plt.subplots(figsize=(6, 4))
    if train_points:
        axes.plot(*zip(*train_points), label="train")
    if validation_points:
        axes.plot(*zip(*validation_points), marker="o", label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(image_path, dpi=80)
    plt.close(figure)
