"""The HParams tab of TensorBoard: the run's hyper-parameters and seed beside its test figures."""

import os

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams


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
    """At the end of testing, writes TensorBoard's HParams entry: the model's and the DataModule's
    hyper-parameters, the seed (`seed_everything`'s, None when unseeded), and as metrics the test figures
    the run logged (their values are the `test/...` scalars). Needs a TensorBoardLogger made with
    `default_hp_metric=False`, so that Lightning's placeholder metric (-1) does not take the entry first."""

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not metrics or not loggers:
            return
        values = dict(pl_module.hparams)
        if trainer.datamodule is not None:
            values["data"] = dict(trainer.datamodule.hparams)
        values["seed"] = os.environ.get("PL_GLOBAL_SEED", "none")
        experiment, start, end = hparams(flat_hyperparameters(values), metrics)
        for logger in loggers:
            writer = logger.experiment.file_writer
            for summary in (experiment, start, end):
                writer.add_summary(summary)
            writer.flush()
