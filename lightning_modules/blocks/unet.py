"""The denoising U-Net of DDPM (Ho et al. 2020, appendix B) with the refinements of Nichol & Dhariwal 2021
(multi-head attention, class embedding added to the time embedding, blocks/conditioning.py), and an ensemble of
independent U-Nets. Each network maps noisy images x_t, timesteps t (and optional labels y) to a
tensor of the images' shape (the predicted noise, or whatever the caller trains it to predict)."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.conditioning import TimeClassEmbedding


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm (Wu & He 2018) with at most 32 groups, as in the paper, and at least 4 channels per group where the
    width allows it: the group count must divide the width, and with one channel per group the norm would subtract
    the per-channel time embedding that `ResBlock` adds just before it, erasing the conditioning."""
    groups = math.gcd(32, channels // 4) if channels % 4 == 0 else math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """Two GroupNorm-SiLU-3x3 conv layers with the time embedding, projected to this block's width, added between
    them (Ho et al. 2020, appendix B; the PixelCNN++ / Wide ResNet block), and a 1x1 conv on the skip path when the
    width changes."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float = 0.0) -> None:
        """
        Args:
            in_channels: channels of the input feature map.
            out_channels: channels of the output feature map.
            time_dim: width of the (time + class) embedding.
            dropout: dropout before the second conv (Ho et al. use 0.1 on CIFAR-10).
        """
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(embedding))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, x + proj(softmax(Q K^T / sqrt(d)) V) on
    GroupNorm(x) (Ho et al. 2020, appendix B; heads from Nichol & Dhariwal 2021), through
    `F.scaled_dot_product_attention`."""

    def __init__(self, channels: int, num_heads: int) -> None:
        """
        Args:
            channels: channels of the feature map (divisible by num_heads).
            num_heads: attention heads, each of width channels / num_heads.
        """
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"attention width {channels} is not divisible by num_heads={num_heads}; "
                "pass a num_heads that divides base_channels * channel_mult at the attention levels"
            )
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> q, k, v of shape (B, heads, H*W, C / heads): one token per pixel
        qkv = self.qkv(self.norm(x)).view(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(attended.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """A 3x3 conv with stride 2 (Ho et al. 2020, appendix B); an odd side rounds up (7 -> 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling followed by a 3x3 conv (Ho et al. 2020, appendix B). It resizes to the skip
    connection's exact size rather than by a factor 2, so odd sides (7 -> 4 -> 7) line up again."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNet(nn.Module):
    """The DDPM U-Net: a 3x3 input conv, then per resolution level `num_res_blocks` residual blocks (with
    self-attention at `attention_levels`) and a strided-conv downsampling; a middle of res block, attention, res
    block; an up path that mirrors it, concatenating the down path's activations; GroupNorm, SiLU and a 3x3 output
    conv. Every residual block receives the sinusoidal timestep embedding passed through a 2-layer MLP, plus a
    learned class embedding when `num_classes` is given."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int | None = None,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: tuple[int, ...] = (2,),
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            in_channels: channels of the input images (given by the model, from the data).
            num_classes: number of class labels for conditioning (given by the model); None = unconditional. The
                label `num_classes` itself is reserved as "no label" (used when y is None, for classifier-free
                guidance, Ho & Salimans 2021).
            out_channels: channels of the output; None = in_channels.
            base_channels: width of level 0; level i has base_channels * channel_mults[i].
            channel_mults: one multiplier per resolution level; len(channel_mults) - 1 downsamplings.
            num_res_blocks: residual blocks per level on the down path (one more on the up path).
            attention_levels: levels with self-attention (0 = full resolution, i = after i downsamplings);
                the middle block always has it.
            num_heads: attention heads (must divide the width at every attention level and the middle).
            dropout: dropout in the residual blocks.
        """
        super().__init__()
        if base_channels < 1 or not channel_mults or min(channel_mults) < 1:
            raise ValueError(
                f"UNet needs base_channels >= 1 and positive channel_mults, got {base_channels} and {channel_mults}"
            )
        if num_res_blocks < 1:
            raise ValueError(f"UNet num_res_blocks must be >= 1, got {num_res_blocks}")
        if num_heads < 1:
            raise ValueError(f"UNet num_heads must be >= 1, got {num_heads}")
        bad_levels = [level for level in attention_levels if not 0 <= level < len(channel_mults)]
        if bad_levels:
            raise ValueError(
                f"attention_levels {bad_levels} do not exist; with channel_mults={channel_mults} pass levels "
                f"in 0..{len(channel_mults) - 1}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.base_channels = base_channels
        self.num_levels = len(channel_mults)

        time_dim = 4 * base_channels  # Ho et al. 2020: the embedding MLP is 4x the base width
        self.embedding = TimeClassEmbedding(base_channels, time_dim, num_classes, "UNet")

        def stage(stage_in: int, stage_out: int, attention: bool) -> nn.ModuleList:
            """One residual block, followed by self-attention when the level has it."""
            layers = [ResBlock(stage_in, stage_out, time_dim, dropout)]
            return nn.ModuleList(layers + [AttentionBlock(stage_out, num_heads)] if attention else layers)

        self.input_conv = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        channels = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                self.down.append(stage(channels, base_channels * mult, level in attention_levels))
                channels = base_channels * mult
                skip_channels.append(channels)
            if level < self.num_levels - 1:
                self.down.append(Downsample(channels))
                skip_channels.append(channels)

        self.middle = nn.ModuleList(
            [
                ResBlock(channels, channels, time_dim, dropout),
                AttentionBlock(channels, num_heads),
                ResBlock(channels, channels, time_dim, dropout),
            ]
        )

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for _ in range(num_res_blocks + 1):
                stage_in = channels + skip_channels.pop()
                self.up.append(stage(stage_in, base_channels * mult, level in attention_levels))
                channels = base_channels * mult
            if level > 0:
                self.up.append(Upsample(channels))

        self.output = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, 1, 1))
        # Zero output conv (Nichol & Dhariwal 2021, "zero_module"): the untrained network predicts exactly 0, the
        # mean of the noise it learns to predict, so the first steps do not fight a random output.
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, H, W) noisy images.
            t: (B,) timesteps, integer or float.
            y: (B,) integer class labels in [0, num_classes), or None.

        Returns:
            (B, out_channels, H, W).
        """
        embedding = self.embedding(t, y)
        h = self.input_conv(x)
        skips = [h]
        for stage in self.down:
            h = stage(h) if isinstance(stage, Downsample) else self._run(stage, h, embedding)
            skips.append(h)
        h = self._run(self.middle, h, embedding)
        for stage in self.up:
            if isinstance(stage, Upsample):
                h = stage(h, skips[-1].shape[-2:])
            else:
                h = self._run(stage, torch.cat([h, skips.pop()], dim=1), embedding)
        return self.output(h)

    @staticmethod
    def _run(layers: nn.ModuleList, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            h = layer(h, embedding) if isinstance(layer, ResBlock) else layer(h)
        return h


class MultiHeadUNet(nn.Module):
    """K independent U-Nets (no shared parameters) run on the same input; their outputs are averaged ("mean") or
    concatenated and mixed by a 1x1 conv ("conv")."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int | None = None,
        heads: int = 3,
        mix: Literal["mean", "conv"] = "mean",
        **unet_args,
    ) -> None:
        """
        Args:
            in_channels: channels of the input images (given by the model, from the data).
            num_classes: number of class labels for conditioning (given by the model); None = unconditional.
            heads: number of U-Nets, >= 1.
            mix: "mean" (average of the heads) or "conv" (a learned 1x1 conv over the concatenated heads).
            **unet_args: the other arguments of every `UNet` (base_channels, channel_mults, ...).
        """
        super().__init__()
        if heads < 1:
            raise ValueError(f"MultiHeadUNet needs heads >= 1, got {heads}")
        if mix not in ("mean", "conv"):
            raise ValueError(f"MultiHeadUNet mix {mix!r} unknown; choose 'mean' or 'conv'")
        self.mix = mix
        self.heads = nn.ModuleList([UNet(in_channels, num_classes, **unet_args) for _ in range(heads)])
        out_channels = self.heads[0].out_channels
        self.mixer = None
        if mix == "conv":
            self.mixer = nn.Conv2d(heads * out_channels, out_channels, 1)
            # start as the mean of the heads, so "conv" begins where "mean" does and learns the weighting from there
            with torch.no_grad():
                self.mixer.weight.zero_()
                self.mixer.bias.zero_()
                for head in range(heads):
                    for c in range(out_channels):
                        self.mixer.weight[c, head * out_channels + c] = 1.0 / heads

    def forward_heads(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each head's own output, (B, out_channels, H, W) each, before mixing."""
        return [head(x, t, y) for head in self.heads]

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, in_channels, H, W) noisy images.
            t: (B,) timesteps.
            y: (B,) class labels, or None.

        Returns:
            (B, out_channels, H, W), the mixed output.
        """
        outputs = self.forward_heads(x, t, y)
        if self.mixer is None:
            return torch.stack(outputs).mean(0)
        return self.mixer(torch.cat(outputs, dim=1))
