#!/usr/bin/env python
"""Draw the FID against the network evaluations a sample costs, one line per `evaluate.py --json` file:

    python scripts/evaluate.py --ckpt edm.ckpt --fid_classifier CLF --samplers heun5,heun10,heun18,heun40 --json edm.json
    python scripts/evaluate.py --ckpt ddpm.ckpt --fid_classifier CLF --samplers ddim9,ddim19,ddim35,ddim79 --json ddpm.json
    python scripts/plot_fid.py edm.json ddpm.json --out fid_vs_evaluations.png

A figure `fid_<sampler>` counts as many evaluations as its sampler takes: heunN 2N - 1 (Heun's second-order
step evaluates twice, but not after the last level), ddimN N, ddpm 1000 (the configs' T; the JSON does not say);
figures of other samplers are left out. Guided samplers (heunNwG) are drawn as their own line, one per weight.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from argument_types import output_file
from matplotlib.figure import Figure

from zoo.errors import BAD_INPUT, report

DDPM_STEPS = 1000


def evaluations(sampler: str) -> tuple[str, int] | None:
    """(the line a sampler belongs to, its network evaluations per sample), or None for a sampler not drawn."""
    if match := re.fullmatch(r"heun(\d+)(w[\d.]+)?", sampler):
        return f"heun{' ' + match[2] if match[2] else ''}", 2 * int(match[1]) - 1
    if match := re.fullmatch(r"ddim(\d+)|ddpm", sampler):
        return ("ddim", int(match[1])) if match[1] else (sampler, DDPM_STEPS)  # the full chain: T steps
    return None


def curves(path: Path) -> dict[str, list[tuple[int, float]]]:
    """The (evaluations, FID) points of one evaluate.py JSON file, by line name ("<model> <sampler kind>")."""
    try:
        figures = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not an evaluate.py --json file ({error}); write one with --json PATH") from None
    lines: dict[str, list[tuple[int, float]]] = {}
    for key, value in figures.items():
        if key.startswith("fid_") and (kind := evaluations(key[len("fid_") :])):
            lines.setdefault(f"{figures.get('model', path.stem)} {kind[0]}", []).append((kind[1], float(value)))
    if not lines:
        raise ValueError(f"{path} holds no FID of a heunN, ddimN or ddpm sampler; run evaluate.py with --samplers")
    return {name: sorted(points) for name, points in lines.items()}


def plot(paths: list[Path], out: str) -> dict[str, list[tuple[int, float]]]:
    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.add_subplot()
    drawn = {}
    for path in paths:
        for name, points in curves(path).items():
            steps, fids = zip(*points, strict=True)
            axes.plot(steps, fids, marker="o", label=name)
            drawn[name] = points
    axes.set(xscale="log", xlabel="network evaluations per sample", ylabel="classifier FID")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    figure.savefig(out, bbox_inches="tight")
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", nargs="+", type=Path, help="files written by evaluate.py --json")
    parser.add_argument("--out", type=output_file, default="fid_vs_evaluations.png", help="the PNG to write")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        drawn = plot(options.json, options.out)
    except BAD_INPUT as error:
        return report("plot_fid.py", error)
    for name, points in drawn.items():
        print(f"{name}: " + ", ".join(f"{steps} -> {fid:.2f}" for steps, fid in points))
    print(f"written to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
