"""A residual MLP denoiser for low-dimensional data (the toy 2-D distributions): the U-Net's timestep and class
conditioning (blocks/conditioning.py), with fully connected layers in place of convolutions. Maps (B, D) noisy
points, (B,) timesteps and optional (B,) labels to (B, D)."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.conditioning import TimeClassEmbedding


class MLPBlock(nn.Module):
    """h + Linear(SiLU(Linear(SiLU(h)) + Linear(SiLU(embedding)))): the U-Net's residual block (Ho et al. 2020,
    appendix B) with Linear layers, the (time + class) embedding projected and added between the two layers."""

    def __init__(self, hidden: int, time_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.time = nn.Linear(time_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(F.silu(h)) + self.time(F.silu(embedding))))


class MLPDenoiser(nn.Module):
    """Linear input layer, `depth` residual MLP blocks that each receive the embedding of t (sinusoidal, then a
    2-layer MLP) plus a class embedding when `num_classes` is given, and a Linear output layer."""

    def __init__(
        self, data_dim: int = 2, num_classes: int | None = None, hidden: int = 128, depth: int = 3, time_dim: int = 64
    ) -> None:
        """
        Args:
            data_dim: dimension D of the data points (given by the model, from the data).
            num_classes: number of class labels for conditioning (given by the model); None = unconditional. The
                label `num_classes` itself is reserved as "no label" (used when y is None), as in `UNet`.
            hidden: width of the hidden layers.
            depth: number of residual blocks.
            time_dim: width of the sinusoidal timestep embedding and of its MLP.
        """
        super().__init__()
        if min(data_dim, hidden, depth, time_dim) < 1:
            raise ValueError(
                f"MLPDenoiser needs positive data_dim, hidden, depth and time_dim, got {data_dim}, {hidden}, "
                f"{depth}, {time_dim}"
            )
        self.embedding = TimeClassEmbedding(time_dim, time_dim, num_classes, "MLPDenoiser")
        self.input = nn.Linear(data_dim, hidden)
        self.blocks = nn.ModuleList([MLPBlock(hidden, time_dim) for _ in range(depth)])
        self.output = nn.Sequential(nn.SiLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, data_dim) noisy points.
            t: (B,) timesteps, integer or float.
            y: (B,) integer class labels in [0, num_classes), or None.

        Returns:
            (B, data_dim).
        """
        embedding = self.embedding(t, y)
        h = self.input(x)
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h)
