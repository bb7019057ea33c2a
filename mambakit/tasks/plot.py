"""Draw the accuracies that ``tasks ... --json`` recorded into one PNG.

Run from the repository root with matplotlib installed (``pip install -e .[plot]``)::

    python -m mambakit.tasks.plot copying.json induction.json --out accuracy.png

Each JSON file contains one task's results. Files of the same task and training length share
a panel, so a gated and a ``--no-gate`` run appear side by side. Selective Copying becomes a bar
per model, and Induction Heads a line per model over the evaluated lengths, so extrapolation
shows as a flat line to the right of the training length.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Low resolution keeps the figure small enough for the docs (well under 150 KB).
DPI = 80
COLORS = {"mamba": "tab:blue", "s4d": "tab:orange"}


def plot_results(records: list[dict], path: str | Path) -> None:
    """Draw one panel per record (a JSON file's contents) and save the figure to ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # Render to a file only, so no display is needed.
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError("no results to plot; pass at least one JSON file written by --json")
    panels: dict[tuple[str, int], tuple[dict, list[dict]]] = {}
    for record in records:
        task = record["task"]
        seed = record.get("settings", {}).get("seed")
        results = [{**result, "seed": seed} for result in record["results"]]
        panels.setdefault((task["name"], task["seq_len"]), (task, []))[1].extend(results)

    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for axis, (task, results) in zip(axes[0], panels.values()):
        if task["name"] == "induction-heads":
            _plot_lengths(axis, results)
            axis.axvline(task["seq_len"], color="gray", linestyle="--", linewidth=1, label="training length")
        else:
            _plot_bars(axis, results)
        chance = results[0]["chance_accuracy"]
        axis.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("accuracy")
        steps = sorted({result["steps"] for result in results})
        steps_text = "/".join(map(str, steps))
        axis.set_title(f"{task['name']}, trained at {task['seq_len']} ({steps_text} steps)", fontsize=10)
        # Line panels keep the middle free: the curves sit near 1 and near chance.
        axis.legend(fontsize=8, loc="center left" if task["name"] == "induction-heads" else "lower left")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _label(result: dict) -> str:
    # Files written before the gated field existed are all gated.
    return result["mixer"] if result.get("gated", True) else f"{result['mixer']}\n(no gate)"


def _plot_bars(axis, results: list[dict]) -> None:
    names = [_label(result) for result in results]
    values = [result["accuracy"] for result in results]
    bars = axis.bar(names, values, color=[COLORS.get(result["mixer"], "gray") for result in results])
    for bar, result in zip(bars, results):
        if not result.get("gated", True):
            bar.set_hatch("//")
    for bar, value in zip(bars, values):
        axis.text(bar.get_x() + bar.get_width() / 2, value + 0.02, f"{value:.2f}", ha="center", fontsize=9)


MARKERS = "osD^v<>p"


def _plot_lengths(axis, results: list[dict]) -> None:
    # Several runs of one model, such as seeds, get the same color and their own markers.
    labels = [_label(result).replace("\n", " ") for result in results]
    repeated = len(set(labels)) < len(labels)
    for index, (result, label) in enumerate(zip(results, labels)):
        if repeated:
            label = f"{label}, seed {result['seed']}, {result['steps']} steps"
        # JSON stores the dictionary keys as strings.
        points = sorted((int(length), value) for length, value in result["eval_accuracy"].items())
        lengths = [length for length, _ in points]
        values = [value for _, value in points]
        style = "-" if result.get("gated", True) else "--"
        axis.plot(
            lengths, values, style, marker=MARKERS[index % len(MARKERS)] if repeated else "o",
            color=COLORS.get(result["mixer"], "gray"), label=label,
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("evaluation length")


def main(argv: list[str] | None = None) -> int:
    """Read the JSON files named on the command line and write the figure."""
    parser = argparse.ArgumentParser(description="Plot synthetic-task accuracies recorded with --json.")
    parser.add_argument("results", nargs="+", help="JSON files written by 'mambakit tasks ... --json'")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    records = [json.loads(Path(name).read_text(encoding="utf-8")) for name in args.results]
    plot_results(records, args.out)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
