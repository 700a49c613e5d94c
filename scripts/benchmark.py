#!/usr/bin/env python
"""Train a model on its real dataset within a budget and print one table row: quality and speed.

    python scripts/benchmark.py MODEL [--epochs N | --steps N | --seconds S] [--data.root DIR]
                                      [--device cpu|cuda] [--json PATH] [--model-only-steps N]
                                      [--save-checkpoint PATH] [--resume CKPT] [--peak-seconds S]
                                      [--peak-size N] [other fit.py flags]

The run is the one `scripts/fit.py --model MODEL` makes (configs/MODEL.yaml), with the budget, the
device and any extra flag on top, no logger and no checkpoint. It is the only place where quality
and speed are measured; the tests never assert on time.

`--model-only-steps N` also times N training steps of the model alone on one batch already on the device
(forward in the run's precision, backward, optimiser step; no data loading, no Lightning loop, no logging) and
reports their throughput and the ratio of the full epochs' throughput to it: near 1, the run is not data-bound.

`--save-checkpoint PATH` keeps the trained model (for sample.py and evaluate.py); `--resume CKPT` trains on
from such a checkpoint, with `--epochs`/`--steps` counted from the start of the first run. A checkpoint saved
after training holds the EMA weights as the raw ones (Lightning's EMAWeightAveraging copies the average into
the model when training ends), so a resumed EMA run continues from the averaged weights.

Throughput is Lightning's ThroughputMonitor over the training batches (data fetch included, validation
excluded), counted in the model's unit when it fulfils the CountsThroughput contract (tokens, env_steps), else
in samples; it is read at the run's last logging step (`--trainer.log_every_n_steps`, 50 unless the config
says otherwise; with `--steps N` at most N), so an `--epochs` or `--seconds` run shorter than that reports none. The row's figure is the test metric the model
names as its `benchmark_metric` (the Benchmarked contract), else the first test metric; a sample FID
(the SampleFID callback's `test/fid*`) comes before either. A run with a SolvedAt
callback (configs/ppo.yaml) also reports when it solved its environment: solved_at_env_steps and
solved_after_s (-1 when it never did). The contracts are in lightning_modules/protocols.py.

`first_step_s` is the first training batch's wall time and `steady_step_s` the median of the batches after the
third (callbacks/step_times.py; forward, backward and optimiser step, the data fetch excluded): with
`--model.compile true`, compile time is about their difference, and the steady-state speed-up of compiling is the
ratio of two runs' `steady_step_s` (with `--steps N`, N of at least a dozen).

FLOP/s, as nanoGPT's MFU line but measured on any device, the CPU included (scripts/flop_rate.py):
`flops_per_step` is one training step's FLOPs (forward and backward of training_step's loss on a batch of the
training split; matmul-like operations only, as torch's FlopCounterMode counts them), `achieved_flops_per_s` that
times ThroughputMonitor's batches per second (`train/batches` / `train/time`), `peak_flops_per_s` the machine's
matmul FLOP/s, the larger of two measurements in this process, before and after training (`--peak-size N` x N
matmuls, 1024 by default, for `--peak-seconds S`, 2 by default) in the dtype of the precision in use, `peak_precision` ("fp32", "bf16", "fp16"
or "fp64", from `--trainer.precision`), and `share_of_peak` achieved / peak. `shape_peak_flops_per_s` is the
matmul rate at the model's own sizes: the GEMM shapes of its forward pass (a convolution as its im2col product),
the largest holding 90% of its FLOPs timed one by one in the same dtype (`--peak-seconds S` / 4 each) and
combined as the step mixes them; `share_of_shape_peak` is achieved / that. A net of small products (16-channel
convolutions) sits far below the 1024 x 1024 peak even at its own ceiling: the two shares tell the model's
waste from its shapes' limit. All seven are None for a model with
manual optimisation (PPO: no single step loss) and for data without a `batch()` helper (an environment).
"""

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from argument_types import positive_float, positive_int
from flop_rate import (
    DTYPE_NAMES,
    GemmShapes,
    barebones,
    matmul_peak_flops,
    precision_dtype,
    shape_peak_flops,
    step_loss,
    training_step_flops,
)
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import Logger

from callbacks import SolvedAt, StepTimes
from datamodules.batches import InMemoryDataModule
from fit import ZooCLI, translate
from lightning_modules.protocols import Benchmarked, CountsThroughput
from zoo.errors import BAD_INPUT, report


class LastMetrics(Logger):
    """A logger that keeps the last value of every metric in memory and writes nothing: how the benchmark reads
    what ThroughputMonitor logs (the image callbacks draw only for file loggers, so they stay idle)."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "benchmark"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def throughput_counter(model: L.LightningModule) -> tuple[Callable[[Any], int], str]:
    """How many units one training batch holds, and the unit: the model's CountsThroughput contract, else samples
    (the batch's first dimension)."""
    if isinstance(model, CountsThroughput):
        return model.count_throughput, model.throughput_unit
    return lambda batch: len(batch[0]), "samples"


def model_only_throughput(
    model: L.LightningModule, trainer: L.Trainer, datamodule: L.LightningDataModule, steps: int, warmup: int = 5
) -> float:
    """Samples (or the model's unit) per second of `steps` training steps on one pre-loaded batch: the
    model's training_step in the run's precision (its autocast, as the training loop runs it), backward and the
    step of the optimiser it trained with, under a barebones Trainer (no logging); the clock is read once, after
    a device sync."""
    if not model.automatic_optimization:
        raise ValueError("--model-only-steps needs a model with automatic optimisation; drop the flag")
    precision = trainer.precision_plugin
    batch = precision.convert_input(datamodule.batch("train", device=model.device))
    optimizer = trainer.optimizers[0]
    count = throughput_counter(model)[0](batch)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    model.train()
    with barebones(model):
        for step in range(warmup + steps):
            if step == warmup:
                sync()
                started = time.perf_counter()
            with precision.train_step_context():
                loss = step_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync()
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
    parser.add_argument(
        "--peak-seconds",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="time the machine's peak matmul FLOP/s for this long (default 2.0)",
    )
    parser.add_argument(
        "--peak-size",
        type=positive_int,
        default=1024,
        metavar="N",
        help="the peak's matmuls are N x N (default 1024)",
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
    cli = ZooCLI(name, args)
    model, trainer = cli.model, cli.trainer
    count, unit = throughput_counter(model)
    trainer.callbacks.append(ThroughputMonitor(batch_size_fn=count))
    clock = StepTimes()
    trainer.callbacks.append(clock)
    trainer.logger = logged = LastMetrics()
    if options.steps is not None:  # a short run still logs (and so measures) at least once, at its last step
        trainer.log_every_n_steps = min(trainer.log_every_n_steps, options.steps)
    # The peak is timed before training as well as after it: on shared cores one window may catch a busy moment,
    # and the larger of the two is the nearer to the machine's (a share of peak is then not inflated by it).
    peak_before = matmul_peak_flops(
        precision_dtype(trainer.precision), options.peak_size, options.peak_seconds, trainer.strategy.root_device
    )
    started = time.perf_counter()
    trainer.fit(model, datamodule=cli.datamodule, ckpt_path=options.resume)
    seconds = time.perf_counter() - started
    results = {k: v for r in trainer.test(model, datamodule=cli.datamodule, verbose=False) for k, v in r.items()}
    if options.save_checkpoint:
        trainer.save_checkpoint(options.save_checkpoint)
    # A sample-quality callback (SampleFID) measures what the model's own metric cannot: its figure comes first.
    sample_quality = sorted(k for k in results if k.startswith("test/fid"))
    metric = model.benchmark_metric if isinstance(model, Benchmarked) else next(iter(sorted(results)), "")
    metric = sample_quality[0] if sample_quality else metric
    key = lambda name: name.replace("/", "_")  # noqa: E731 - "test/neg_elbo_nats" -> "test_neg_elbo_nats"
    # ThroughputMonitor's running totals since training started (validation excluded), at its last log.
    counted, timed = logged.metrics.get("train/samples"), logged.metrics.get("train/time")
    row = {
        "model": options.model,
        "dataset": getattr(cli.datamodule, "data_source", None) or type(cli.datamodule).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "seconds": round(seconds, 2),
        "samples_per_s": round(counted / timed, 1) if counted and timed else None,
        "throughput_unit": unit,
        "metric": key(metric),
        "value": results.get(metric),
        "first_step_s": round(clock.first, 4) if clock.first else None,
        "steady_step_s": round(clock.steady, 4) if clock.steady else None,
    }
    row.update({key(k).removeprefix("test_"): v for k, v in results.items() if k != metric})
    for solved in (c for c in trainer.callbacks if isinstance(c, SolvedAt) and c.threshold is not None):
        row["solved_at_env_steps"] = solved.env_steps or -1
        row["solved_after_s"] = round(solved.seconds, 2) if solved.seconds else -1
    back_on_the_run_device(model, trainer)
    if options.model_only_steps:
        alone = model_only_throughput(model, trainer, cli.datamodule, options.model_only_steps)
        row["model_only_per_s"] = round(alone, 1)
        row["epoch_to_model_only_ratio"] = round(row["samples_per_s"] / alone, 3) if row["samples_per_s"] else None
    batches = logged.metrics.get("train/batches")
    batches_per_s = batches / timed if batches and timed else None
    row.update(flop_rates(model, trainer, cli.datamodule, batches_per_s, options, peak_before))
    return row


def back_on_the_run_device(model: L.LightningModule, trainer: L.Trainer) -> None:
    """The model and its optimisers' state back on the run's device, where the trainer's teardown took them off
    (to the CPU): the measurements after training run where training ran. An optimiser's load_state_dict puts
    each state tensor on its parameter's device."""
    model.to(trainer.strategy.root_device)
    for optimizer in trainer.optimizers:
        optimizer.load_state_dict(optimizer.state_dict())


def flop_rates(
    model: L.LightningModule,
    trainer: L.Trainer,
    datamodule: L.LightningDataModule,
    batches_per_s: float | None,
    options: argparse.Namespace,
    peak_before: float = 0.0,
) -> dict[str, Any]:
    """The row's FLOP/s fields: one training step's FLOPs on a batch of the training split, the run's FLOP/s (those
    times ThroughputMonitor's batches per second), the machine's peak for the precision in use, measured now on
    the run's device (the larger of that and `peak_before`, timed before training), and the peak at the model's
    own matmul shapes (`shape_peak_flops`), with the run's share of each. All None for a model without a single
    step loss (manual optimisation) or data without `batch()` (an environment)."""
    fields = ("flops_per_step", "achieved_flops_per_s", "peak_flops_per_s", "peak_precision", "share_of_peak")
    fields += ("shape_peak_flops_per_s", "share_of_shape_peak")
    if not model.automatic_optimization or not isinstance(datamodule, InMemoryDataModule):
        return dict.fromkeys(fields)
    shapes = GemmShapes()
    flops = training_step_flops(model, datamodule.batch("train", device=model.device), shapes)
    dtype = precision_dtype(trainer.precision)
    peak = max(peak_before, matmul_peak_flops(dtype, options.peak_size, options.peak_seconds, model.device))
    shape_peak = shape_peak_flops(shapes.flops, dtype, options.peak_seconds / 4, model.device) if shapes.flops else None
    achieved = flops * batches_per_s if batches_per_s else None
    share = achieved / peak if achieved else None
    shape_share = achieved / shape_peak if achieved and shape_peak else None
    values = (flops, achieved, peak, DTYPE_NAMES[dtype], share, shape_peak, shape_share)
    return dict(zip(fields, values, strict=True))


def table_row(row: dict) -> str:
    value = f"{row['value']:.4f}" if isinstance(row["value"], float) else str(row["value"])
    unit = row["throughput_unit"]
    header = f"| model | dataset | params | epochs | seconds | {unit}/s | GFLOP/s | share of peak | {row['metric']} |"
    cells = [row["model"], row["dataset"], f"{row['params']:,}", row["epochs"], row["seconds"]]
    cells += [f"{row['samples_per_s']:,.0f}" if row["samples_per_s"] else "-"]
    achieved, share = row["achieved_flops_per_s"], row["share_of_peak"]
    shape_share = row.get("share_of_shape_peak")
    at_shapes = f" ({shape_share:.1%} at its shapes)" if shape_share else ""
    cells += [
        f"{achieved / 1e9:,.2f}" if achieved else "-",
        f"{share:.1%} of {row['peak_precision']}{at_shapes}" if share else "-",
    ]
    return header + "\n" + "|---" * len(cells + [value]) + "|\n| " + " | ".join(map(str, [*cells, value])) + " |"


def shown_value(value: Any) -> str:
    """A float to 4 decimals, or to 4 significant digits when large (a peak of 5.871e+10 FLOP/s)."""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e6 else f"{value:.4f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    options, extra = parse(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*define a `flops_per_batch` attribute.*")  # counted here, not by the monitor
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")  # inside Lightning, not the run
    torch.set_float32_matmul_precision("high")
    try:
        row = run(options, extra)
    except BAD_INPUT as error:
        return report("benchmark.py", error)
    print(table_row(row))
    shown = ("model", "dataset", "params", "epochs", "seconds", "samples_per_s", "throughput_unit", "metric", "value")
    shown += ("achieved_flops_per_s", "share_of_peak", "share_of_shape_peak")
    extras = {k: v for k, v in row.items() if k not in shown}
    print("  " + ", ".join(f"{k}={shown_value(v)}" for k, v in extras.items()))
    if options.json:
        with open(options.json, "w") as file:
            json.dump(row, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
