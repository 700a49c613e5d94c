#!/usr/bin/env python
"""Draw logged metrics of a run against its epochs, one line per run and metric, from the TensorBoard event files
that `scripts/fit.py` writes (runs/MODEL/version_N):

    python scripts/fit.py --model realnvp --data.root DIR
    python scripts/plot_curve.py runs/realnvp/version_0 --tag val/bits_per_dim --out bits_per_dim.png --ylim 1 2
    python scripts/plot_curve.py runs/simclr/version_0 runs/simclr/version_1 --tag knn/acc --out knn.png

A metric logged once an epoch (validation, the kNN callback) is placed at the end of the epoch it was logged in,
counted from 1 (Lightning logs its 0-based `epoch` scalar beside every metric, at the same step); one logged every
few steps at the fraction of its epoch's steps it was logged after; the test, logged once the epoch counter has
moved past the last epoch, at the number of epochs trained. `--x step` uses the optimiser step instead. A run resumed
into the same version continues its curve.
"""

import argparse
import bisect
import sys
from pathlib import Path

from argument_types import output_file
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zoo.errors import BAD_INPUT, report


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of a run folder's event files, by tag: (step, value) in step order, later writes winning."""
    files = sorted(run.glob("**/events.out.tfevents.*")) if run.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"{run} holds no TensorBoard event files; pass a run folder such as runs/MODEL/version_0"
        )
    series: dict[str, dict[int, float]] = {}
    for file in files:  # names start with their creation time, so a resumed run's file comes later
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})  # 0: keep every point, not a sample
        events.Reload()
        for tag in events.Tags()["scalars"]:
            series.setdefault(tag, {}).update((event.step, event.value) for event in events.Scalars(tag))
    return {tag: sorted(points.items()) for tag, points in series.items()}


def against_epochs(points: list[tuple[int, float]], epochs: list[tuple[int, float]]) -> list[tuple[float, float]]:
    """Each (step, value) at its epoch, counted from 1: a point logged at the last step of (0-based) epoch e lands
    on e + 1, one logged part-way through it on the matching fraction of the steps between the ends of e - 1 and e."""
    ends: dict[int, int] = {}
    for step, epoch in epochs:
        ends[int(epoch)] = max(step, ends.get(int(epoch), step))
    steps = [step for step, _ in epochs]
    placed = []
    for step, value in points:
        epoch = int(epochs[max(bisect.bisect_right(steps, step) - 1, 0)][1])  # the epoch logged at or before it
        start, end = ends.get(epoch - 1, 0), ends[epoch]
        if epoch > 0 and end - start <= 1:  # after the last epoch (the test): the counter moved on, no step did
            placed.append((float(epoch), value))
        else:
            placed.append((epoch + (step - start) / (end - start) if end > start else epoch + 1.0, value))
    return placed


def curves(runs: list[Path], tags: list[str], x: str) -> dict[str, list[tuple[float, float]]]:
    """The points to draw, by line name ("<run folder> <tag>")."""
    lines = {}
    for run in runs:
        logged = scalars(run)
        for tag in tags:
            if tag not in logged:
                known = ", ".join(sorted(name for name in logged if name != "epoch"))
                raise ValueError(f"--tag {tag}: {run} logged no such metric; it logged {known}")
            if x == "epoch" and "epoch" not in logged:
                raise ValueError(f"{run} logged no epoch scalar; draw it with --x step")
            points = logged[tag]
            lines[f"{run} {tag}"] = points if x == "step" else against_epochs(points, logged["epoch"])
    return lines


def plot(
    lines: dict[str, list[tuple[float, float]]], x: str, out: str, ylim: tuple[float, float] | None = None
) -> Figure:
    """The lines drawn into `out`; `ylim` (low, high) crops the vertical axis, e.g. past an untrained first epoch."""
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    for name, points in lines.items():
        xs, ys = zip(*points, strict=True)
        axes.plot(xs, ys, marker="o" if len(points) <= 50 else None, label=name)
    axes.set(xlabel=x, ylabel=", ".join(sorted({name.rsplit(" ", 1)[1] for name in lines})))
    if ylim is not None:
        axes.set_ylim(*ylim)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(out, bbox_inches="tight")
    return figure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by fit.py (runs/MODEL/version_N)")
    parser.add_argument("--tag", action="append", required=True, help="a logged metric, e.g. val/loss; repeatable")
    parser.add_argument("--x", choices=("epoch", "step"), default="epoch", help="what the horizontal axis counts")
    parser.add_argument("--out", type=output_file, default="curve.png", help="the PNG to write")
    parser.add_argument("--ylim", nargs=2, type=float, metavar=("LOW", "HIGH"), help="the vertical axis' range")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if options.ylim is not None and not options.ylim[0] < options.ylim[1]:
        low, high = options.ylim
        parser.error(f"--ylim {low:g} {high:g}: LOW must be below HIGH, e.g. --ylim 1.0 2.0")
    try:
        lines = curves(options.runs, options.tag, options.x)
    except BAD_INPUT as error:
        return report("plot_curve.py", error)
    plot(lines, options.x, options.out, options.ylim)
    for name, points in lines.items():
        shown = points if len(points) <= 12 else points[-12:]
        print(
            f"{name}: " + ", ".join(f"{x:g} -> {y:.4g}" for x, y in shown) + (" (last 12)" if shown != points else "")
        )
    print(f"written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
