"""Samples from the same noise after every few epochs, so one sees a generative model learn."""

import math

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure

from callbacks.image_batches import is_due, output_folder, write_grid
from lightning_modules.protocols import Samples, require


def training_points(trainer: L.Trainer, max_points: int) -> torch.Tensor | None:
    """Up to `max_points` points from the first batches of the DataModule's train dataloader (the first
    element of each batch), or None without a DataModule."""
    datamodule = trainer.datamodule
    if datamodule is None:
        return None
    points, count = [], 0
    for batch in datamodule.train_dataloader():
        batch = batch[0] if isinstance(batch, list | tuple) else batch
        points.append(batch[: max_points - count].float().cpu())
        count += len(points[-1])
        if count >= max_points:
            break
    return torch.cat(points) if points else None


def scatter_figure(samples: torch.Tensor, data: torch.Tensor | None, title: str) -> Figure:
    """The samples in red over the training points in grey."""
    figure = Figure(figsize=(6, 6), dpi=100)
    axes = figure.add_subplot()
    if data is not None:
        axes.scatter(*data.T.numpy(), s=3, c="0.6", alpha=0.5, label=f"data ({len(data)})")
    axes.scatter(*samples.T.numpy(), s=3, c="tab:red", alpha=0.7, label=f"samples ({len(samples)})")
    axes.set_aspect("equal")
    axes.legend(loc="upper right", markerscale=4)
    axes.set_title(title)
    return figure


class SampleGrid(L.Callback):
    """At the end of every `every_n_epochs` training epochs and after the last, draws `n` samples with the
    model's documented `sample(n, **sample_args)` from the same seeded noise each time, inside
    `torch.random.fork_rng`, so the pictures compare across epochs and the training's random stream is left
    as it was. Images (B, C, H, W) in [0, 1] become a grid: TensorBoard `samples/grid` and
    `<run folder>/samples/grid_epoch<E>.png`. 2-D points (B, 2) become a scatter plot over up to 2,000 points
    of the first training batches (TensorBoard `samples/scatter`, `<run folder>/samples/scatter_epoch<E>.png`).
    Runs on global rank 0; runs without a file logger draw nothing.
    """

    max_data_points = 2000

    def __init__(self, every_n_epochs: int = 1, n: int = 64, seed: int = 0, sample_args: dict | None = None) -> None:
        """
        Args:
            every_n_epochs: draw at the end of every this many training epochs (and of the last).
            n: samples drawn.
            seed: seed of the sampling noise, the same at every drawing.
            sample_args: extra keyword arguments of the model's `sample`, e.g. {"steps": 50}.
        """
        if every_n_epochs < 1 or n < 1:
            raise ValueError("SampleGrid needs every_n_epochs >= 1 and n >= 1")
        self.every_n_epochs, self.n, self.seed = every_n_epochs, n, seed
        self.sample_args = dict(sample_args or {})
        self._data: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, Samples, "SampleGrid")

    @torch.no_grad()
    def draw(self, pl_module: L.LightningModule) -> torch.Tensor:
        """`sample(n, **sample_args)` from the seeded noise, in eval mode; the global RNG states are restored."""
        device = pl_module.device
        accelerator = [] if device.type == "cpu" else [device]
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.random.fork_rng(devices=accelerator, device_type=None if device.type == "cpu" else device.type):
                torch.manual_seed(self.seed)
                return pl_module.sample(self.n, **self.sample_args).detach().float().cpu()
        finally:
            pl_module.train(was_training)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_due(trainer, self.every_n_epochs):
            return
        folder = output_folder(trainer, "samples")
        if folder is None:
            return
        samples = self.draw(pl_module)
        if samples.ndim == 4:
            write_grid(trainer, folder, "samples/grid", samples, nrow=math.ceil(math.sqrt(len(samples))))
        elif samples.ndim == 2 and samples.shape[1] == 2:
            if self._data is None:
                # The loader is iterated without touching the training's random stream.
                with torch.random.fork_rng(devices=[]):
                    self._data = training_points(trainer, self.max_data_points)
            title = f"{type(pl_module).__name__}, epoch {trainer.current_epoch}"
            figure = scatter_figure(samples, self._data, title)
            figure.savefig(folder / f"scatter_epoch{trainer.current_epoch:03d}.png")
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure("samples/scatter", figure, global_step=trainer.global_step)
        else:
            raise ValueError(
                f"{type(pl_module).__name__}.sample returned shape {tuple(samples.shape)}; SampleGrid draws "
                "images (B, C, H, W) or 2-D points (B, 2)"
            )
