"""The HParams tab of TensorBoard: the run's hyper-parameters and seed beside its figures."""

import os
from typing import Literal

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams

Stage = Literal["fit", "validate", "test"]


def flat_hyperparameters(values: dict, prefix: str = "") -> dict[str, int | float | str | bool]:
    """Nested hyper-parameters as `a/b` keys with the scalar types HParams shows; anything else as its text."""
    flat: dict[str, int | float | str | bool] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hyperparameters(value, f"{name}/"))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


class HParamsSummary(L.Callback):
    """Writes TensorBoard's HParams entry once, at the end of the run's last stage (`after`: fit, validate or
    test): the model's and the DataModule's hyper-parameters, the seed (`seed_everything`'s, "none" when
    unseeded), and as metrics the validation and test figures the run logged (the tab reads their values from
    the `val/...` and `test/...` scalars). Once only, because TensorBoard keeps the first entry of a run. Needs a
    TensorBoardLogger made with `default_hp_metric=False`, so that Lightning's placeholder metric (-1) does not
    take the entry first."""

    def __init__(self, after: Stage = "test") -> None:
        self.after = after
        self.metric_names: set[str] = set()

    def collect(self, trainer: L.Trainer) -> None:
        self.metric_names |= {k for k in trainer.callback_metrics if k.startswith(("val/", "test/"))}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.collect(trainer)
        if self.after == "fit":
            self.write(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.collect(trainer)
            if self.after == "validate":
                self.write(trainer, pl_module)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.collect(trainer)
        if self.after == "test":
            self.write(trainer, pl_module)

    @rank_zero_only
    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not self.metric_names or not loggers:
            return
        values = dict(pl_module.hparams)
        if trainer.datamodule is not None:
            values["data"] = dict(trainer.datamodule.hparams)
        values["seed"] = os.environ.get("PL_GLOBAL_SEED", "none")
        # The values are placeholders: the tab shows each metric's last scalar event, the figure the run logged.
        experiment, start, end = hparams(flat_hyperparameters(values), dict.fromkeys(sorted(self.metric_names), 0.0))
        for logger in loggers:
            writer = logger.experiment.file_writer
            for summary in (experiment, start, end):
                writer.add_summary(summary)
            writer.flush()
