"""Test images beside their reconstructions, so one can see what a model keeps and what it loses."""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from callbacks.image_batches import first_test_images, is_due, output_folder, write_grid
from lightning_modules.protocols import Encodes, require


class ReconstructionGrid(L.Callback):
    """Every `every_n_epochs` training epochs and after the last, writes a grid of `n` test images, one per column: the inputs
    in the first row, then (for a model with `corrupt(x)`, the denoising autoencoder) the corrupted inputs,
    then the reconstructions `decode(encode(input))`. It goes to TensorBoard as `reconstructions/grid` and
    to `<run folder>/reconstructions/grid_epoch<E>.png`. Uses only the Encodes contract (`encode`, `decode`;
    lightning_modules/protocols.py) and the optional `corrupt`. Runs without a logger write nothing.
    """

    def __init__(self, every_n_epochs: int = 1, n: int = 16) -> None:
        """
        Args:
            every_n_epochs: write the grid at the end of every this many training epochs (and of the last).
            n: test images shown (columns).
        """
        if every_n_epochs < 1 or n < 1:
            raise ValueError("ReconstructionGrid needs every_n_epochs >= 1 and n >= 1")
        self.every_n_epochs, self.n = every_n_epochs, n

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, Encodes, "ReconstructionGrid")

    @torch.no_grad()
    def rows(self, pl_module: L.LightningModule, images: torch.Tensor) -> torch.Tensor:
        """Inputs, [corrupted inputs,] reconstructions, stacked row after row."""
        corrupt = getattr(pl_module, "corrupt", None)
        inputs = corrupt(images) if corrupt is not None else images
        reconstructions = pl_module.decode(pl_module.encode(inputs))
        shown = [images, inputs, reconstructions] if corrupt is not None else [images, reconstructions]
        return torch.cat(shown)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_due(trainer, self.every_n_epochs):
            return
        folder = output_folder(trainer, "reconstructions")
        if folder is None:
            return
        images, _ = first_test_images(trainer, pl_module, self.n)
        was_training = pl_module.training
        pl_module.eval()
        try:
            write_grid(trainer, folder, "reconstructions/grid", self.rows(pl_module, images), nrow=len(images))
        finally:
            pl_module.train(was_training)
