"""The conditioning of the denoisers: the sinusoidal timestep embedding through a 2-layer MLP (Ho et al. 2020,
appendix B) plus a learned class embedding (Nichol & Dhariwal 2021, sec. 3), with one extra "no label" row so a
conditional network can also run unconditionally (classifier-free guidance, Ho & Salimans 2021)."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of timesteps: cos(t w_i) and sin(t w_i) with frequencies w_i = max_period^(-i / half)
    (the position encoding of Vaswani et al. 2017, sec. 3.5, used for t by Ho et al. 2020, appendix B).

    Args:
        t: (B,) timesteps, integer or float (fractional t gives the in-between embedding).
        dim: embedding width; an odd width gets a zero last column.
        max_period: the longest wavelength, which sets the lowest frequency.

    Returns:
        (B, dim) float32 embedding.
    """
    if t.dim() != 1:
        raise ValueError(f"timestep_embedding expects t of shape (B,), got {tuple(t.shape)}; pass one t per sample")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class TimeClassEmbedding(nn.Module):
    """MLP(sinusoid(t)) + class(y): the (B, dim) vector every block of a denoiser receives. Without `num_classes`
    it is the time embedding alone and refuses labels."""

    def __init__(self, sinusoid_dim: int, dim: int, num_classes: int | None, owner: str) -> None:
        """
        Args:
            sinusoid_dim: width of the sinusoidal timestep embedding, the MLP's input.
            dim: width of the output (the MLP's hidden and output width, and of the class embedding).
            num_classes: number of class labels; None = unconditional. The label `num_classes` itself is
                reserved as "no label" (used when y is None).
            owner: the network's name, for the error messages.
        """
        super().__init__()
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"{owner} num_classes must be >= 1 or None, got {num_classes}")
        self.sinusoid_dim, self.num_classes, self.owner = sinusoid_dim, num_classes, owner
        self.time_mlp = nn.Sequential(nn.Linear(sinusoid_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.class_embedding = nn.Embedding(num_classes + 1, dim) if num_classes is not None else None

    def forward(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            t: (B,) timesteps, integer or float.
            y: (B,) integer class labels in [0, num_classes), or None ("no label" when conditional).

        Returns:
            (B, dim), in the dtype of the MLP's weights.
        """
        sinusoid = timestep_embedding(t, self.sinusoid_dim).to(self.time_mlp[0].weight.dtype)
        embedding = self.time_mlp(sinusoid)
        if self.class_embedding is None:
            if y is not None:
                raise ValueError(f"{self.owner} got class labels y but was built without num_classes; pass num_classes")
            return embedding
        if y is None:
            y = torch.full_like(t, self.num_classes, dtype=torch.long)
        return embedding + self.class_embedding(y)
