#!/usr/bin/env python
"""Train a model on its real dataset within a budget and print one table row: quality and speed.

    python scripts/benchmark.py MODEL [--epochs N | --steps N | --seconds S] [--data.root DIR]
                                      [--device cpu|cuda] [--json PATH] [other fit.py flags]

The run is the one `scripts/fit.py --model MODEL` makes (configs/MODEL.yaml), with the budget, the
device and any extra flag on top, no logger and no checkpoint. It is the only place where quality
and speed are measured; the tests never assert on time.

A model can say how it is measured with two optional class attributes and one method:
  benchmark_metric = "test/neg_elbo_nats"   the logged test metric that is the model's figure
  throughput_unit = "samples"               what it counts: samples, tokens, env_steps, ...
  def count_throughput(self, batch) -> int  how many of them one training batch holds
"""

import argparse
import json
import sys
import time
import warnings

import lightning as L
import torch

from fit import UsageError, ZooCLI, innermost, translate


class Throughput(L.Callback):
    """Time spent in training batches, data fetch included, validation excluded, and what they held."""

    def __init__(self) -> None:
        self.seconds, self.count, self._mark = 0.0, 0, None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._mark = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        self.seconds += now - self._mark
        self._mark = now
        counter = getattr(pl_module, "count_throughput", None)
        self.count += counter(batch) if counter else len(batch[0])


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a registered model name (see scripts/fit.py --help)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="train this many epochs (default: the config's)")
    budget.add_argument("--steps", type=int, help="train this many optimiser steps")
    budget.add_argument("--seconds", type=float, help="train for this much wall time")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the row as one JSON object")
    return parser.parse_known_args(argv)


def fit_args(options: argparse.Namespace, extra: list[str]) -> tuple[str | None, list[str]]:
    name, args = translate(["--model", options.model, *extra])
    args += ["--trainer.accelerator", "gpu" if options.device == "cuda" else "cpu", "--trainer.devices", "1"]
    args += ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if options.epochs is not None:
        args += ["--trainer.max_epochs", str(options.epochs)]
    if options.steps is not None:
        args += ["--trainer.max_steps", str(options.steps), "--trainer.max_epochs", "-1"]
    if options.seconds is not None:
        args += ["--trainer.max_time", json.dumps({"seconds": options.seconds}), "--trainer.max_epochs", "-1"]
    return name, args


def run(options: argparse.Namespace, extra: list[str]) -> dict:
    name, args = fit_args(options, extra)
    throughput = Throughput()
    cli = ZooCLI(name, args, extra_callbacks=[throughput])
    model, trainer = cli.model, cli.trainer
    started = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule)
    seconds = time.perf_counter() - started
    results = {k: v for r in trainer.test(model, datamodule=cli.datamodule, verbose=False) for k, v in r.items()}
    metric = getattr(model, "benchmark_metric", None) or next(iter(sorted(results)), "")
    key = lambda name: name.replace("/", "_")  # noqa: E731 - "test/neg_elbo_nats" -> "test_neg_elbo_nats"
    unit = getattr(model, "throughput_unit", "samples")
    row = {
        "model": options.model,
        "dataset": getattr(cli.datamodule, "data_source", None) or type(cli.datamodule).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "seconds": round(seconds, 2),
        "samples_per_s": round(throughput.count / max(throughput.seconds, 1e-9), 1),
        "throughput_unit": unit,
        "metric": key(metric),
        "value": results.get(metric),
    }
    row.update({key(k).removeprefix("test_"): v for k, v in results.items() if k != metric})
    return row


def table_row(row: dict) -> str:
    value = f"{row['value']:.4f}" if isinstance(row["value"], float) else str(row["value"])
    header = f"| model | dataset | params | epochs | seconds | {row['throughput_unit']}/s | {row['metric']} |"
    cells = [row["model"], row["dataset"], f"{row['params']:,}", row["epochs"], row["seconds"]]
    cells += [f"{row['samples_per_s']:,.0f}", value]
    return header + "\n|---|---|---|---|---|---|---|\n| " + " | ".join(map(str, cells)) + " |"


def main(argv: list[str] | None = None) -> int:
    options, extra = parse(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    torch.set_float32_matmul_precision("high")
    try:
        row = run(options, extra)
    except (ValueError, FileNotFoundError, FloatingPointError, UsageError) as error:
        print(f"benchmark.py: error: {innermost(error)}", file=sys.stderr)
        return 2
    print(table_row(row))
    shown = ("model", "dataset", "params", "epochs", "seconds", "samples_per_s", "throughput_unit", "metric", "value")
    extras = {k: v for k, v in row.items() if k not in shown}
    print("  " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in extras.items()))
    if options.json:
        with open(options.json, "w") as file:
            json.dump(row, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
