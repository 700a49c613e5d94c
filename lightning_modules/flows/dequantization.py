"""From 8-bit images to a continuous density and back: dequantisation (uniform, Theis et al. 2016; variational,
Ho et al. 2019, Flow++ Sec. 3.1) and the logit transform of Dinh et al. (2017, Sec. 4.1), each with its
log-determinant, so that a flow's continuous density gives a bound on the discrete images' log-likelihood:

    log P(x) >= E_{u ~ q(u|x)} [ log p_y((x + u) / 256) - D log 256 - log q(u|x) ]   (Flow++ eq. 12)

with x the integer levels 0..255, u in [0, 1)^D and p_y the density of y = (x + u) / 256 in [0, 1]^D."""

import math

import torch
from torch import nn

from lightning_modules.flows.coupling import FlowSequence, coupling_stack, log_standard_normal, wide

LEVELS = 256


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (k / 255, as the DataModules give them) back to their integer levels 0..255, as floats."""
    return torch.round(wide(images) * (LEVELS - 1)).clamp(0, LEVELS - 1)


def logit_transform(y: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """z = logit(alpha + (1 - 2 alpha) y) (Dinh et al. 2017, Sec. 4.1: the boundaries of [0, 1] are kept away from
    the logit's poles) and log|dz/dy| per example: D log(1 - 2 alpha) - sum log(s (1 - s))."""
    s = alpha + (1 - 2 * alpha) * wide(y)
    z = torch.log(s) - torch.log1p(-s)
    log_det = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).flatten(1).sum(1)
    return z, log_det


def inverse_logit_transform(z: torch.Tensor, alpha: float) -> torch.Tensor:
    return (torch.sigmoid(z) - alpha) / (1 - 2 * alpha)


class UniformDequantization(nn.Module):
    """u ~ U[0, 1)^D: log q(u|x) = 0, and the bound is that of Theis et al. (2016)."""

    def forward(
        self, levels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(y = (x + u) / 256, log q(u|x) per example) for integer levels x."""
        u = torch.rand(levels.shape, device=levels.device, dtype=levels.dtype, generator=generator)
        return (levels + u) / LEVELS, levels.new_zeros(len(levels))


class VariationalDequantization(nn.Module):
    """u = sigmoid(h), h = g(eps; x), eps ~ N(0, I), g a conditional flow of checkerboard affine couplings whose
    s and t also see the image (Flow++ Sec. 3.1): log q(u|x) = log N(eps) - log|det dh/deps| - sum log sigmoid'(h)."""

    def __init__(self, shape: tuple[int, int, int], couplings: int = 4, hidden: int = 32, blocks: int = 1) -> None:
        super().__init__()
        channels = shape[0]
        self.flow = FlowSequence(coupling_stack(shape, "checkerboard", couplings, hidden, blocks, "actnorm", channels))

    def forward(
        self, levels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(levels.shape, device=levels.device, dtype=levels.dtype, generator=generator)
        u, log_q = self.noise_and_log_q(eps, levels / (LEVELS - 1) * 2 - 1)  # conditioned on the centred image
        return (levels + u) / LEVELS, log_q

    def noise_and_log_q(self, eps: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u = sigmoid(g(eps; context)) and log q(u|x) per example, by the change of variables from eps."""
        h, log_det = self.flow(eps, context)
        # log sigmoid'(h) = log sigmoid(h) + log sigmoid(-h), written with logsigmoid for large |h|.
        log_sigmoid_grad = (nn.functional.logsigmoid(h) + nn.functional.logsigmoid(-h)).flatten(1).sum(1)
        return torch.sigmoid(h), log_standard_normal(eps) - log_det - log_sigmoid_grad


def bits_per_dim(log_likelihood_nats: torch.Tensor, dims: int) -> torch.Tensor:
    """-log2 P(x) / D per example: a log-likelihood in nats of D-dimensional data in bits per dimension."""
    return -log_likelihood_nats / (dims * math.log(2))
