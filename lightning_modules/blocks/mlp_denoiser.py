"""A residual MLP denoiser for low-dimensional data (the toy 2-D distributions): the U-Net's timestep embedding
and conditioning, with fully connected layers in place of convolutions. Maps (B, D) noisy points, (B,) timesteps
and optional (B,) labels to (B, D)."""

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.unet import timestep_embedding


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
        self, data_dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 64, num_classes: int | None = None
    ) -> None:
        """
        Args:
            data_dim: dimension D of the data points.
            hidden: width of the hidden layers.
            depth: number of residual blocks.
            time_dim: width of the sinusoidal timestep embedding and of its MLP.
            num_classes: number of class labels for conditioning; None = unconditional. The label `num_classes`
                itself is reserved as "no label" (used when y is None), as in `UNet`.
        """
        super().__init__()
        if min(data_dim, hidden, depth, time_dim) < 1:
            raise ValueError(
                f"MLPDenoiser needs positive data_dim, hidden, depth and time_dim, got {data_dim}, {hidden}, "
                f"{depth}, {time_dim}"
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"MLPDenoiser num_classes must be >= 1 or None, got {num_classes}")
        self.time_dim, self.num_classes = time_dim, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        # one extra row: the "no label" embedding, so a conditional model can also be run unconditionally
        self.class_embedding = nn.Embedding(num_classes + 1, time_dim) if num_classes is not None else None
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
        embedding = self.time_mlp(timestep_embedding(t, self.time_dim))
        if self.class_embedding is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            embedding = embedding + self.class_embedding(y)
        elif y is not None:
            raise ValueError("MLPDenoiser got class labels y but was built without num_classes; pass num_classes=...")
        h = self.input(x)
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h)
