"""A picture of the latent space: the codes of test images, coloured by label."""

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from callbacks.image_batches import output_folder
from lightning_modules.protocols import Embeds, Encodes, require


def embed_2d_or_3d(codes: np.ndarray, seed: int = 0) -> np.ndarray:
    """The codes themselves when they have 2 or 3 dimensions (nothing to distort); otherwise their t-SNE
    embedding in 2-D (van der Maaten & Hinton 2008), through scikit-learn."""
    if codes.shape[1] in (2, 3):
        return codes
    if codes.shape[1] == 1:
        return np.concatenate([codes, np.zeros_like(codes)], axis=1)
    perplexity = min(30.0, (len(codes) - 1) / 3)
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(codes)


def scatter_figure(points: np.ndarray, labels: np.ndarray | None, title: str) -> Figure:
    """A 2-D or 3-D scatter plot of the points, coloured by integer label when there is one."""
    figure = Figure(figsize=(6, 6), dpi=100)
    three_d = points.shape[1] == 3
    axes = figure.add_subplot(projection="3d" if three_d else None)
    colours = {"c": labels, "cmap": "tab10"} if labels is not None else {}
    drawn = axes.scatter(*points.T, s=4, **colours)
    if labels is not None:
        figure.colorbar(drawn, ax=axes, shrink=0.7, label="label")
    axes.set_title(title)
    return figure


class LatentEmbedding(L.Callback):
    """At the end of testing, maps up to `max_points` test images with the model's `embed` (the Embeds
    contract, lightning_modules/protocols.py), else its `encode` (Encodes), and plots the codes coloured by
    label: as they are when the latent is 2-D or 3-D, through t-SNE otherwise. The figure goes to TensorBoard as
    `latent_embedding/test` and to `<run folder>/latent_embedding/test.png`. Runs without a logger plot nothing.
    """

    def __init__(self, max_points: int = 2000, seed: int = 0) -> None:
        """
        Args:
            max_points: test images encoded and plotted (t-SNE's cost grows with the square of this).
            seed: seed of t-SNE, so plots of different runs compare.
        """
        if max_points < 2:
            raise ValueError("LatentEmbedding needs max_points >= 2")
        self.max_points, self.seed = max_points, seed
        self._codes: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(pl_module, Embeds):
            require(pl_module, Encodes, "LatentEmbedding")

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._codes, self._labels = [], []

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        wanted = self.max_points - sum(len(c) for c in self._codes)
        if wanted <= 0 or output_folder(trainer, "latent_embedding") is None:
            return
        images, labels = batch[0][:wanted], batch[1][:wanted]
        codes = pl_module.embed(images) if isinstance(pl_module, Embeds) else pl_module.encode(images)
        self._codes.append(codes.flatten(1).float().cpu())
        self._labels.append(labels.cpu())

    @rank_zero_only
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = output_folder(trainer, "latent_embedding")
        if folder is None or sum(len(c) for c in self._codes) < 2:
            return
        codes = torch.cat(self._codes).numpy()
        labels = torch.cat(self._labels)
        labels = labels.numpy() if labels.ndim == 1 else None  # multi-attribute labels (CelebA) are not colours
        points = embed_2d_or_3d(codes, self.seed)
        how = "the codes themselves" if codes.shape[1] in (2, 3) else f"t-SNE of {codes.shape[1]}-d codes"
        figure = scatter_figure(points, labels, f"{type(pl_module).__name__}: {len(codes)} test images, {how}")
        figure.savefig(folder / "test.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("latent_embedding/test", figure, global_step=trainer.global_step)
        self._codes, self._labels = [], []
