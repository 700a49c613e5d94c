"""What the image callbacks share: a fixed batch of test images as the model sees them, and where and how
a grid of images is written (TensorBoard and a PNG under the run folder)."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torchvision.utils import make_grid, save_image


def is_due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """True at the end of every `every_n_epochs`-th training epoch, and always after the last one."""
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


def first_test_images(trainer: L.Trainer, pl_module: L.LightningModule, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` test images and labels on the model's device, as a test step sees them (float32 in
    [0, 1], not augmented): the DataModule's `batch`."""
    datamodule = trainer.datamodule
    if not callable(getattr(datamodule, "batch", None)):
        raise ValueError("the image callbacks need an image DataModule (one with batch()); pass one to fit")
    return datamodule.batch("test", n, pl_module.device)


def output_folder(trainer: L.Trainer, name: str) -> Path | None:
    """`<run folder>/<name>`, or None for a run without a file logger (the benchmark, fast_dev_run's dummy
    logger), which writes nothing. Reads the logger's own log_dir: `trainer.log_dir` is a collective call
    under DDP and would hang a callback that runs on rank 0 only."""
    logger = trainer.logger
    if not isinstance(logger, TensorBoardLogger | CSVLogger):
        return None
    folder = Path(logger.log_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_grid(trainer: L.Trainer, folder: Path, tag: str, images: torch.Tensor, nrow: int) -> Path:
    """Tile images in [0, 1] into a grid of `nrow` columns; log it to TensorBoard as `tag` at this step and
    save it as `<folder>/<tag's last part>_epoch<E>.png`. Returns the PNG's path."""
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, global_step=trainer.global_step)
    path = folder / f"{tag.rsplit('/', 1)[-1]}_epoch{trainer.current_epoch:03d}.png"
    save_image(grid, path)
    return path
