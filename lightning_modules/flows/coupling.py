"""The invertible layers of RealNVP (Dinh et al. 2017): affine couplings with checkerboard and channel-wise
masks (Sec. 3.2-3.4), squeeze (Sec. 3.6), and the normalisations a flow can carry, ActNorm (Kingma & Dhariwal 2018)
and batch normalisation with its log-determinant (Sec. 3.7). Every layer maps x to (y, log|det dy/dx|) per
example, summed in fp32, and has `inverse(y)`."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

MaskKind = Literal["checkerboard", "channel"]


def wide(t: torch.Tensor) -> torch.Tensor:
    """t in fp32 at least (float64 stays float64): log-determinants are sums of hundreds of terms, which half
    precision would round to a few significant digits."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def checkerboard_mask(height: int, width: int, parity: int) -> torch.Tensor:
    """(1, 1, H, W): 1 where (i + j + parity) is even, the pixels the coupling keeps (Sec. 3.4, Fig. 3 left)."""
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    return ((rows + cols + parity) % 2 == 0).float()[None, None]


def channel_mask(channels: int, parity: int) -> torch.Tensor:
    """(1, C, 1, 1): 1 on the first half of the channels (the second half for parity 1) (Sec. 3.4, Fig. 3 right)."""
    mask = (torch.arange(channels) < channels // 2).float()
    return (mask if parity == 0 else 1 - mask)[None, :, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class CouplingNetwork(nn.Module):
    """s and t of a coupling from the kept half: a small residual network (the paper's are ResNets, Sec. 4.1).
    Its last convolution starts at zero, so every coupling starts as the identity and a deep flow trains stably."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int, blocks: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            *[ResidualBlock(hidden) for _ in range(blocks)],
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x).chunk(2, dim=1)


class AffineCoupling(nn.Module):
    """y = b x + (1 - b) (x exp(s(b x)) + t(b x)) (Dinh et al. 2017, eq. 9), log|det| = sum (1 - b) s (eq. 6).
    s is bounded by a learned scale times tanh, as in the paper's code, so that exp(s) cannot overflow early on.
    `context_channels` are extra inputs of s and t (the image that a variational dequantiser is conditioned on)."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        mask: MaskKind,
        parity: int,
        hidden: int,
        blocks: int,
        context_channels: int = 0,
    ) -> None:
        super().__init__()
        channels, height, width = shape
        if mask == "channel" and channels < 2:
            raise ValueError(f"a channel-wise coupling needs at least 2 channels, got shape {shape}")
        self.register_buffer("mask", checkerboard_mask(height, width, parity) if mask == "checkerboard" else
                             channel_mask(channels, parity))  # fmt: skip
        self.network = CouplingNetwork(channels + context_channels, channels, hidden, blocks)
        self.log_scale_factor = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def scale_shift(self, kept: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = kept if context is None else torch.cat([kept, context], dim=1)
        s, t = self.network(inputs)
        s = self.log_scale_factor.exp() * torch.tanh(s)
        return s * (1 - self.mask), t * (1 - self.mask)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.scale_shift(x * self.mask, context)
        return x * torch.exp(s) + t, wide(s).flatten(1).sum(1)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        # The kept half is unchanged (mask 1 gives s = t = 0 there), so s and t are recomputed from y exactly.
        s, t = self.scale_shift(y * self.mask, context)
        return (y - t) * torch.exp(-s)


class ActNorm(nn.Module):
    """y = (x + b) exp(log_s) per channel (Kingma & Dhariwal 2018, Sec. 3.1), log|det| = H W sum log_s; b and log_s
    are set from the first training batch so that y has zero mean and unit variance per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialised", torch.tensor(False))
        # The buffer (what checkpoints keep) seen True, as a Python bool: once set, the check below is a constant to
        # torch.compile, where a branch on the buffer's value would break the flow's graph at every ActNorm.
        self.seen_initialised = False
        self.register_load_state_dict_post_hook(ActNorm.forget_seen)

    @staticmethod
    def forget_seen(module: "ActNorm", incompatible_keys) -> None:
        module.seen_initialised = False  # a loaded buffer may say otherwise: read it again

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
        self.log_scale.copy_(-torch.log(x.std(dim=(0, 2, 3), keepdim=True) + 1e-6))
        self.initialised.fill_(True)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.seen_initialised:
            if not self.initialised:
                self.initialise(x)
            self.seen_initialised = True
        log_det = wide(self.log_scale).sum() * x.shape[2] * x.shape[3]
        return (x + self.bias) * torch.exp(self.log_scale), log_det.expand(len(x))

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class FlowBatchNorm(nn.Module):
    """Batch normalisation as a flow layer (Dinh et al. 2017, Sec. 3.7, eq. 10): y = (x - mu) / sqrt(var + eps)
    exp(log_gamma) + beta, log|det| = H W sum (log_gamma - log(var + eps) / 2). Training uses the batch's statistics
    and updates running averages; evaluation, sampling and the inverse use the running averages."""

    def __init__(self, channels: int, momentum: float = 0.05, eps: float = 1e-4) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.log_gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) * torch.rsqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        log_det = wide(self.log_gamma - 0.5 * torch.log(var + self.eps)).sum() * x.shape[2] * x.shape[3]
        return y, log_det.expand(len(x))

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return (y - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(
            self.running_var + self.eps
        ) + self.running_mean


class Squeeze(nn.Module):
    """(C, H, W) -> (4C, H/2, W/2): each 2x2 block of pixels becomes 4 channels (Sec. 3.6, Fig. 3); volume-preserving."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return F.pixel_unshuffle(x, 2), x.new_zeros(len(x), dtype=wide(x).dtype)

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return F.pixel_shuffle(y, 2)


NORMS = {"actnorm": ActNorm, "batchnorm": FlowBatchNorm}


class FlowSequence(nn.ModuleList):
    """Layers applied in order; log-determinants add up (the chain rule), the inverse runs them backwards."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        total = x.new_zeros(len(x), dtype=wide(x).dtype)
        for layer in self:
            x, log_det = layer(x, context)
            total = total + log_det
        return x, total

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in reversed(self):
            y = layer.inverse(y, context)
        return y


def coupling_stack(
    shape: tuple[int, int, int],
    mask: MaskKind,
    count: int,
    hidden: int,
    blocks: int,
    norm: Literal["actnorm", "batchnorm", "none"],
    context_channels: int = 0,
) -> list[nn.Module]:
    """`count` couplings of one mask kind with alternating parity (so every variable is transformed), each
    followed by the normalisation (none for "none")."""
    layers: list[nn.Module] = []
    for index in range(count):
        layers.append(AffineCoupling(shape, mask, index % 2, hidden, blocks, context_channels))
        if norm != "none":
            layers.append(NORMS[norm](shape[0]))
    return layers


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed per example over all but the first dimension."""
    return -0.5 * (wide(z).pow(2) + math.log(2 * math.pi)).flatten(1).sum(1)
