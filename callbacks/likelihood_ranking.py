"""The picture of Dinh et al. (2017, Fig. 6 and 7's companions): test images and samples ranked by the model's
log-likelihood, the most likely beside the least likely."""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from callbacks.image_batches import output_folder, write_grid
from lightning_modules.metrics import draw_samples
from lightning_modules.protocols import HasLikelihood, Samples, require


def ranked(log_likelihoods: torch.Tensor, images: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` most likely images, most likely first, and the `k` least likely, least likely first."""
    order = torch.argsort(log_likelihoods, descending=True)
    return images[order[:k]], images[order.flip(0)[:k]]


class LikelihoodRanking(L.Callback):
    """At the end of `trainer.test`, scores the first `n` test images (`datamodule.batch`) and, for a model that
    also samples, `n` seeded samples with the model's `log_prob` (the HasLikelihood contract), and writes the `k`
    most and the `k` least likely of each as grids: TensorBoard `likelihood/<test|samples>_<most|least>` and
    `<run folder>/likelihood/<test|samples>_<most|least>_epoch<E>.png`. Runs on global rank 0; runs without a file
    logger write nothing."""

    def __init__(self, n: int = 1000, k: int = 32, seed: int = 0, batch_size: int = 250) -> None:
        """
        Args:
            n: test images (and samples) ranked.
            k: images in each grid (at most n).
            seed: seed of the samples and of the likelihoods' noise (a flow's dequantisation).
            batch_size: images scored per call of `log_prob`.
        """
        if n < 2 or k < 1 or batch_size < 1:
            raise ValueError(f"LikelihoodRanking needs n >= 2, k >= 1 and batch_size >= 1, got {n}, {k}, {batch_size}")
        self.n, self.k, self.seed, self.batch_size = n, k, seed, batch_size

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, HasLikelihood, "LikelihoodRanking")

    @torch.no_grad()
    def log_likelihoods(self, pl_module: L.LightningModule, images: torch.Tensor) -> torch.Tensor:
        device = pl_module.device
        accelerator = [] if device.type == "cpu" else [device]
        with torch.random.fork_rng(devices=accelerator, device_type=None if device.type == "cpu" else device.type):
            torch.manual_seed(self.seed)
            return torch.cat([pl_module.log_prob(chunk.to(device)).float().cpu()
                              for chunk in images.split(self.batch_size)])  # fmt: skip

    @rank_zero_only
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = output_folder(trainer, "likelihood")
        datamodule = trainer.datamodule
        if folder is None or not callable(getattr(datamodule, "batch", None)):
            return
        sets = {"test": datamodule.batch("test", self.n)[0].cpu()}
        if isinstance(pl_module, Samples):
            sets["samples"] = draw_samples(pl_module, self.n, {}, self.seed, self.batch_size)
        columns = min(self.k, 8)
        for name, images in sets.items():
            most, least = ranked(self.log_likelihoods(pl_module, images), images, min(self.k, len(images)))
            write_grid(trainer, folder, f"likelihood/{name}_most", most, nrow=columns)
            write_grid(trainer, folder, f"likelihood/{name}_least", least, nrow=columns)
