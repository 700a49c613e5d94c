"""The wall-clock time of every training batch, so that a run's first step (where torch.compile compiles, and
kernels warm up) can be told apart from its steady state."""

import statistics
import time

import lightning as L
import torch


class StepTimes(L.Callback):
    """Seconds of each training batch, from `on_train_batch_start` to `on_train_batch_end`: the forward, the
    backward and the optimiser step (the data fetch before it excluded). On a GPU the clock is read after a
    device sync, which costs the run a little; it is a measurement callback (scripts/benchmark.py adds it).

    `first` is the first batch's time, `steady` the median of those after the first `warmup`: with
    `--model.compile true` the compile time is about `first - steady`, and the steady-state speed-up of compiling
    the ratio of two runs' `steady`."""

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.seconds: list[float] = []
        self._started: float | None = None

    @staticmethod
    def _clock(module: L.LightningModule) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._started = self._clock(pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._started is not None:
            self.seconds.append(self._clock(pl_module) - self._started)
            self._started = None

    @property
    def first(self) -> float | None:
        return self.seconds[0] if self.seconds else None

    @property
    def steady(self) -> float | None:
        """The median batch time after the warm-up batches (None when the run had no more batches than that)."""
        after = self.seconds[self.warmup :]
        return statistics.median(after) if after else None
