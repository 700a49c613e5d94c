"""The learning-rate curve of a scheduled model."""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor


class LearningRateCurve(LearningRateMonitor):
    """Lightning's LearningRateMonitor (TensorBoard `lr-<Optimizer>`, per optimiser step by default) that
    stays idle in a run without a logger (`--trainer.logger false`, benchmarks) instead of stopping it."""

    def __init__(self, logging_interval: str | None = "step", **kwargs: Any) -> None:
        super().__init__(logging_interval=logging_interval, **kwargs)

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)
