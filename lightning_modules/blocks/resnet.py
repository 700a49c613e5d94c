"""ResNets for small images (He et al. 2016): the CIFAR ResNet-20/32/56/110 of sec. 4.2 and ResNet-18 with a
3x3 stem and no max-pool, as is usual for 32x32 inputs."""

import torch
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    """Option A (sec. 3.3): the identity, subsampled by the stride and zero-padded to the new width; no
    parameters."""

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut around them (fig. 2): relu(F(x) + shortcut(x))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(stride, out_channels - in_channels)
        else:  # option B: a 1x1 projection where the shape changes (eq. 2)
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def stage_plan(depth: int) -> tuple[list[int], list[int]]:
    """Blocks per stage and widths: 6n+2 layers in 3 stages of 16, 32, 64 maps (sec. 4.2), or ResNet-18."""
    if depth == 18:
        return [2, 2, 2, 2], [64, 128, 256, 512]
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet depth must be 6n+2 (20, 32, 44, 56, 110) or 18, got {depth}; pass e.g. depth 20")
    n = (depth - 2) // 6
    return [n, n, n], [16, 32, 64]


class ResNet(nn.Module):
    """3x3 stem, stages of basic blocks (stride 2 at each new stage), global average pooling, Linear head.
    Stages are `stages.0`, `stages.1`, ... so that callbacks can select them by name prefix."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 20,
        shortcut: str = "A",
        width: int = 1,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images.
            num_classes: number of logits; 0 leaves the Linear out, so the network returns its pooled features
                (a representation, as self-supervised models train).
            depth: 20, 32, 44, 56 or 110 (CIFAR ResNets, 3 stages), or 18 (ResNet-18, 4 stages).
            shortcut: "A" zero-padding identity or "B" 1x1 projection where the shape changes (sec. 3.3).
            width: every stage's channels times this (a wide ResNet, Zagoruyko & Komodakis 2016): 2 gives a
                ResNet-20 of 32, 64 and 128 maps, 4x the multiply-adds; self-supervised methods gain more from
                width than supervised ones (Chen et al. 2020, fig. 7).
        """
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"resnet shortcut must be 'A' or 'B', got {shortcut!r}")
        if width < 1:
            raise ValueError(f"resnet width must be a positive integer multiplier, got {width}; pass e.g. width 2")
        blocks, widths = stage_plan(depth)
        widths = [w * width for w in widths]
        self.stem = nn.Sequential(
            nn.Conv2d(image_shape[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, in_channels = [], widths[0]
        for index, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            layers = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride, shortcut))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        logits = nn.Linear(in_channels, num_classes) if num_classes else nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), logits)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")  # He et al. 2015

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))
