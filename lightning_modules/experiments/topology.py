"""The data's topology from a linear model: one bias-free N x N layer (N pixels) trained to predict every pixel
from all the others, its diagonal masked out so that it cannot copy. Nothing tells it that the pixels lie on a
grid; its strong weights link the pixels that predict each other, and on images those are neighbours. The test
reports how many of the strong links join grid neighbours, and draws the weights and the graph of strong links
at the pixels' positions."""

import math
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import MeanSquaredError


def pixel_positions(height: int, width: int) -> torch.Tensor:
    """(row, column) of each pixel in the order of `images.flatten(1)` (row-major), (height * width, 2)."""
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows.flatten(), columns.flatten()], dim=1)


def grid_neighbours(height: int, width: int, neighbourhood: int) -> torch.Tensor:
    """(N, N) bool: pixels i and j are neighbours on the grid, the 4 that share an edge or the 8 that share
    an edge or a corner."""
    if neighbourhood not in (4, 8):
        raise ValueError(f"the grid neighbourhood is 4 or 8 pixels, got {neighbourhood}")
    positions = pixel_positions(height, width)
    offsets = (positions[:, None, :] - positions[None, :, :]).abs()
    if neighbourhood == 4:
        return offsets.sum(dim=-1) == 1
    return offsets.amax(dim=-1) == 1


def strong_links(weights: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, N) bool, symmetric, no self-links: |W_ij + W_ji| / 2 > threshold, a link for the pair whatever its
    direction of prediction."""
    symmetric = (weights + weights.T).abs() / 2
    return (symmetric > threshold) & ~torch.eye(len(weights), dtype=torch.bool, device=weights.device)


def grid_neighbour_fraction(links: torch.Tensor, height: int, width: int, neighbourhood: int) -> float:
    """The fraction of the links (pairs i < j of a symmetric bool matrix) that join grid neighbours; NaN when
    there is no link."""
    pairs = torch.triu(links, diagonal=1)
    total = int(pairs.sum())
    if total == 0:
        return math.nan
    return int((pairs & grid_neighbours(height, width, neighbourhood).to(links.device)).sum()) / total


def weights_figure(weights: torch.Tensor, height: int, width: int) -> Figure:
    """The weight matrix, and the weights predicting four pixels laid out as images (their receptive fields)."""
    figure = Figure(figsize=(12, 6), dpi=100)
    limit = float(weights.abs().max()) or 1.0
    matrix = figure.add_subplot(1, 2, 1)
    drawn = matrix.imshow(weights.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    matrix.set_title("W[i, j]: weight of pixel j in the prediction of pixel i")
    matrix.set_xlabel("input pixel j (row-major)")
    matrix.set_ylabel("predicted pixel i")
    figure.colorbar(drawn, ax=matrix, shrink=0.7)
    picked = [
        (height // 2, width // 2),
        (height // 3, width // 3),
        (height // 2, width // 4),
        (2 * height // 3, 2 * width // 3),
    ]
    for k, (row, column) in enumerate(picked):
        axes = figure.add_subplot(2, 4, 3 + (k // 2) * 4 + k % 2)
        axes.imshow(weights[row * width + column].view(height, width).numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
        axes.plot(column, row, "k+", markersize=8)
        axes.set_title(f"predicting ({row}, {column})", fontsize=9)
        axes.set_axis_off()
    return figure


def links_figure(links: torch.Tensor, weights: torch.Tensor, height: int, width: int, title: str) -> Figure:
    """The strong links drawn as segments between the pixels' positions (row down, column right)."""
    figure = Figure(figsize=(7, 7), dpi=100)
    axes = figure.add_subplot()
    positions = pixel_positions(height, width).flip(1).float()  # (x, y) = (column, row)
    i, j = torch.triu(links, diagonal=1).nonzero(as_tuple=True)
    strength = ((weights + weights.T) / 2)[i, j]
    segments = torch.stack([positions[i], positions[j]], dim=1).numpy()
    lines = LineCollection(segments, array=strength.numpy(), cmap="RdBu_r", linewidths=0.8)
    limit = float(strength.abs().max()) if len(strength) else 1.0
    lines.set_clim(-limit, limit)
    axes.add_collection(lines)
    axes.scatter(*positions.T.numpy(), s=1, c="0.7")
    axes.set_xlim(-1, width)
    axes.set_ylim(height, -1)
    axes.set_aspect("equal")
    axes.set_title(title, fontsize=10)
    figure.colorbar(lines, ax=axes, shrink=0.7, label="(W_ij + W_ji) / 2")
    return figure


class PixelGraph(L.LightningModule):
    """Predicts each pixel from the others with one bias-free linear layer whose diagonal is masked to zero.

    The weights start at zero, so a pixel that never varies (MNIST's borders) keeps zero weights instead of
    random ones, and training is least squares from a fixed start. The test logs the prediction MSE and, for
    the strong links (|W_ij + W_ji| / 2 > link_threshold), their count and the fractions of them that join
    4- and 8-neighbours of the grid; a run with a TensorBoard or CSV logger also writes `weights.png` and
    `links.png` under `<run folder>/topology/`.
    """

    benchmark_metric = "test/grid4_fraction"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        link_threshold: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py. One channel.
            link_threshold: a pair of pixels is strongly linked when |W_ij + W_ji| / 2 exceeds it.
            lr: Adam learning rate.
            weight_decay: AdamW's decoupled weight decay on W (0: plain least squares).
        """
        super().__init__()
        if image_shape is None or image_shape[0] != 1:
            raise ValueError(
                f"{type(self).__name__} needs single-channel images (e.g. --data mnist), got {image_shape}"
            )
        if link_threshold < 0:
            raise ValueError(f"--model.link_threshold must be >= 0, got {link_threshold}")
        self.save_hyperparameters()
        pixels = math.prod(image_shape)
        self.weight = nn.Parameter(torch.zeros(pixels, pixels))
        self.register_buffer("off_diagonal", 1 - torch.eye(pixels), persistent=False)
        self.test_mse = MeanSquaredError()

    def effective_weight(self) -> torch.Tensor:
        """W with its diagonal zeroed: what the layer multiplies by (pixel i's own value never reaches it)."""
        return self.weight * self.off_diagonal

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Each pixel predicted from the others, the images' shape."""
        return (images.flatten(1) @ self.effective_weight().T).view_as(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0]
        loss = F.mse_loss(self(images), images)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images = batch[0]
        self.log("val/loss", F.mse_loss(self(images), images), prog_bar=True, sync_dist=True, batch_size=len(images))

    def test_step(self, batch, batch_idx: int) -> None:
        images = batch[0]
        self.test_mse.update(self(images), images)
        self.log("test/mse", self.test_mse)

    def on_test_epoch_end(self) -> None:
        _, height, width = self.hparams.image_shape
        weights = self.effective_weight().detach().float().cpu()
        links = strong_links(weights, self.hparams.link_threshold)
        fractions = {n: grid_neighbour_fraction(links, height, width, n) for n in (4, 8)}
        self.log("test/strong_links", float(torch.triu(links, diagonal=1).sum()))
        self.log("test/grid4_fraction", fractions[4])
        self.log("test/grid8_fraction", fractions[8])
        self.write_figures(weights, links, fractions)

    @rank_zero_only
    def write_figures(self, weights: torch.Tensor, links: torch.Tensor, fractions: dict[int, float]) -> None:
        """weights.png and links.png under `<run folder>/topology/`, for a run whose logger writes files (not the
        benchmark's or fast_dev_run's), and the same figures to TensorBoard."""
        if not isinstance(self.logger, TensorBoardLogger | CSVLogger):
            return
        _, height, width = self.hparams.image_shape
        count = int(torch.triu(links, diagonal=1).sum())
        title = (
            f"{count} links with |W_ij + W_ji| / 2 > {self.hparams.link_threshold}: "
            f"{fractions[4]:.1%} join 4-neighbours, {fractions[8]:.1%} 8-neighbours"
        )
        folder = Path(self.logger.log_dir) / "topology"
        folder.mkdir(parents=True, exist_ok=True)
        for name, figure in (("weights", weights_figure(weights, height, width)),
                             ("links", links_figure(links, weights, height, width, title))):  # fmt: skip
            figure.savefig(folder / f"{name}.png")
            if isinstance(self.logger, TensorBoardLogger):
                self.logger.experiment.add_figure(f"topology/{name}", figure, global_step=self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
