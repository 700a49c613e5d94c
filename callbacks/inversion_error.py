"""How well an encoder-decoder inverts: the error of decode(encode(x)) on test images, at the end of the test."""

import lightning as L

from callbacks.image_batches import first_test_images
from lightning_modules.metrics import reconstruction_mse
from lightning_modules.protocols import Encodes, require


class InversionError(L.Callback):
    """At the end of `trainer.test`, logs `test/inversion_mse`: the mean squared error, in [0, 1] pixel units, of
    decode(encode(x)) against x over the first `n` test images (`datamodule.batch`), for any `Encodes` model (for
    DDPM: DDIM inversion to the noise latent and regeneration). The mean over processes under DDP."""

    def __init__(self, n: int = 64) -> None:
        """
        Args:
            n: test images inverted.
        """
        if n < 1:
            raise ValueError(f"InversionError needs n >= 1 test images, got {n}")
        self.n = n

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, Encodes, "InversionError")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images, _ = first_test_images(trainer, pl_module, self.n)
        pl_module.log("test/inversion_mse", reconstruction_mse(pl_module, images), sync_dist=True)
