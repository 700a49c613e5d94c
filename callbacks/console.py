"""What a run prints: Lightning's rich progress bar and model summary without the lines that say nothing about
the run (advertising tips, a FLOPs column of zeros, "Epoch 0/-2" for a run budgeted in steps, the logger's
version number), with room for whole metric names."""

import logging

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from callbacks.hparams_summary import HParamsSummary, Stage

# Lines Lightning writes through its rank-zero logger that are about Lightning, not about the run.
NOISE = ("💡 Tip:", "Trainer already configured with model summary callbacks")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NOISE)


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and notes on its own defaults from the console (once per process)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropNoise) for f in log.filters):
        log.addFilter(DropNoise())


class ZooProgressBar(RichProgressBar):
    """Lightning's RichProgressBar with a shorter bar (the metrics' column gets the width, so their names are
    not cut), no `v_num`, and "Epoch E" without a last epoch when the run is budgeted in steps."""

    bar_width = 20

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        for column in columns:
            if hasattr(column, "bar_width"):
                column.bar_width = self.bar_width
        return columns

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's own prints max_epochs - 1 as the last epoch: "Epoch 0/-2" when max_epochs is -1.
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        # The description is set once an epoch: name the budget, not a step count that would go stale.
        text = f"Epoch {current_epoch}" + (f" (max_steps {trainer.max_steps})" if trainer.max_steps > 0 else "")
        return f"{text:{len(self.validation_description)}}"


class ZooModelSummary(RichModelSummary):
    """Lightning's RichModelSummary, without the FLOPs column and total when they are all zero (they are
    measured only for a model with an `example_input_array`)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs,
    ) -> None:
        if total_flops:
            return RichModelSummary.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops,
                **summarize_kwargs,
            )
        from rich import get_console
        from rich.table import Table

        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        for name, _ in columns:
            style = "dim" if name == " " else None
            table.add_column(
                name, justify="right" if name in ("Params", "In sizes", "Out sizes") else "left", style=style
            )
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        trainable = get_human_readable_count(int(trainable_parameters)).strip()
        frozen = get_human_readable_count(int(total_parameters - trainable_parameters)).strip()
        console.print(
            f"[bold]Params[/]: {trainable} trainable, {frozen} frozen, {get_formatted_model_size(model_size)} MB"
        )
        modes = total_training_modes
        console.print(f"[bold]Modules[/]: {modes['train']} in train mode, {modes['eval']} in eval mode")


def display_callbacks(
    progress_bar: bool | None = True, model_summary: bool | None = True, last_stage: Stage | None = "test"
) -> list[L.Callback]:
    """What every run shows, for a Trainer with these `enable_progress_bar` / `enable_model_summary` values
    (None is Lightning's default, on): the progress bar and model summary above, and the HParams entry written
    after `last_stage` (None: none; its TensorBoardLogger needs `default_hp_metric=False`). Quiets Lightning's
    tips as a side effect."""
    quiet_lightning()
    callbacks: list[L.Callback] = [] if last_stage is None else [HParamsSummary(after=last_stage)]
    if progress_bar is not False:
        callbacks.append(ZooProgressBar())
        if model_summary is not False:
            callbacks.append(ZooModelSummary())
    return callbacks
