#!/usr/bin/env python
"""Train a model on its real dataset within a budget and print one table row: quality and speed.

    python scripts/benchmark.py MODEL [--epochs N | --steps N | --seconds S] [--data.root DIR]
                                      [--device cpu|cuda] [--json PATH] [--model-only-steps N]
                                      [--save-checkpoint PATH] [--resume CKPT] [other fit.py flags]

The run is the one `scripts/fit.py --model MODEL` makes (configs/MODEL.yaml), with the budget, the
device and any extra flag on top, no logger and no checkpoint. It is the only place where quality
and speed are measured; the tests never assert on time.

`--model-only-steps N` also times N training steps of the model alone on one batch already on the device
(forward, backward, optimiser step; no data loading, no Lightning loop, no logging) and reports their
throughput and the ratio of the full epochs' throughput to it: near 1, the run is not data-bound.

`--save-checkpoint PATH` keeps the trained model (for sample.py and evaluate.py); `--resume CKPT` trains on
from such a checkpoint, with `--epochs`/`--steps` counted from the start of the first run. A checkpoint saved
after training holds the EMA weights as the raw ones (Lightning's EMAWeightAveraging copies the average into
the model when training ends), so a resumed EMA run continues from the averaged weights.

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
from pathlib import Path

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


def model_only_throughput(
    model: L.LightningModule, trainer: L.Trainer, datamodule: L.LightningDataModule, steps: int, warmup: int = 5
) -> float:
    """Samples (or the model's unit) per second of `steps` training steps on one pre-loaded batch: the
    model's training_step, backward and the step of the optimiser it trained with. Logging is switched off
    for the measure (self.log needs Lightning's loop); the clock is read once, after a device sync."""
    if not model.automatic_optimization:
        raise ValueError("--model-only-steps needs a model with automatic optimisation; drop the flag")
    batch = datamodule.batch("train", device=model.device)
    optimizer = trainer.optimizers[0]
    counter = getattr(model, "count_throughput", None)
    count = counter(batch) if counter else len(batch[0])
    sync = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    model.train()
    model.log = model.log_dict = lambda *args, **kwargs: None
    try:
        for step in range(warmup + steps):
            if step == warmup:
                sync()
                started = time.perf_counter()
            loss = model.training_step(batch, 0)
            loss = loss["loss"] if isinstance(loss, dict) else loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()
    finally:
        del model.log, model.log_dict  # the class's own methods again
    return steps * count / (time.perf_counter() - started)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a registered model name (see scripts/fit.py --help)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help="train this many epochs (default: the config's)")
    budget.add_argument("--steps", type=int, help="train this many optimiser steps")
    budget.add_argument("--seconds", type=float, help="train for this much wall time")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the row as one JSON object")
    parser.add_argument("--save-checkpoint", metavar="PATH", help="also save the trained model (for sample.py)")
    parser.add_argument(
        "--resume",
        metavar="CKPT",
        help="continue training from a checkpoint (e.g. one --save-checkpoint wrote); --epochs counts from zero",
    )
    parser.add_argument(
        "--model-only-steps",
        type=int,
        metavar="N",
        help="also time N training steps of the model alone on one pre-loaded batch (is the run data-bound?)",
    )
    options, extra = parser.parse_known_args(argv)
    if options.model_only_steps is not None and options.model_only_steps < 1:
        parser.error(f"--model-only-steps must be a positive number of steps, got {options.model_only_steps}")
    if options.resume is not None and not Path(options.resume).is_file():
        parser.error(f"--resume: checkpoint {options.resume} not found; pass a .ckpt file that exists")
    return options, extra


def as_duration(seconds: float) -> str:
    """Lightning's max_time string, DD:HH:MM:SS (whole seconds, at least one)."""
    total = max(1, round(seconds))
    return f"{total // 86400:02d}:{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


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
        args += ["--trainer.max_time", as_duration(options.seconds), "--trainer.max_epochs", "-1"]
    return name, args


def run(options: argparse.Namespace, extra: list[str]) -> dict:
    name, args = fit_args(options, extra)
    throughput = Throughput()
    cli = ZooCLI(name, args, extra_callbacks=[throughput])
    model, trainer = cli.model, cli.trainer
    started = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule, ckpt_path=options.resume)
    seconds = time.perf_counter() - started
    results = {k: v for r in trainer.test(model, datamodule=cli.datamodule, verbose=False) for k, v in r.items()}
    if options.save_checkpoint:
        trainer.save_checkpoint(options.save_checkpoint)
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
    if options.model_only_steps:
        alone = model_only_throughput(model, trainer, cli.datamodule, options.model_only_steps)
        row["model_only_per_s"] = round(alone, 1)
        row["epoch_to_model_only_ratio"] = round(row["samples_per_s"] / alone, 3)
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
