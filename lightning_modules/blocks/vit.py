"""Vision Transformers: ViT (Dosovitskiy et al. 2020), the same transformer fed by a convolutional stem
("hybrid"), and self-attention over single pixels of a small image."""

import torch
from torch import nn

from lightning_modules.blocks.transformer import TransformerBlock


class TokenClassifier(nn.Module):
    """A class token and learned position embeddings added to the tokens (ViT eq. 1), the encoder blocks, a
    final LayerNorm and a Linear head on the class token (eq. 4)."""

    def __init__(self, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float, classes: int):
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.class_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.position
        return self.head(self.norm(self.blocks(x))[:, 0])


class ViT(nn.Module):
    """ViT: non-overlapping patches, linearly embedded (a conv with kernel = stride = patch size), then the
    transformer. With `stem_depth` > 0 it is the hybrid of sec. 3.1: that many 3x3 conv-BN-ReLU layers
    (full resolution, `stem_channels` maps) come first and the patches are cut from their feature map;
    `stem_depth` 0 is the plain ViT."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        stem_depth: int = 0,
        stem_channels: int = 32,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images; H and W multiples of patch_size.
            num_classes: number of logits.
            patch_size: side of the square patches (one token each).
            dim: token width.
            depth: number of transformer blocks.
            heads: attention heads (dim must be divisible by it).
            mlp_ratio: hidden width of each block's MLP, as a multiple of dim.
            dropout: dropout on the attention weights and on both residual branches.
            stem_depth: 3x3 conv layers before the patch embedding (0 = plain ViT).
            stem_channels: width of those conv layers.
        """
        super().__init__()
        channels, height, width = image_shape
        if height % patch_size or width % patch_size:
            raise ValueError(
                f"image {height}x{width} is not a whole number of {patch_size}x{patch_size} patches; "
                "pass a patch_size that divides it (e.g. 4 or 7 for 28x28, 4 or 8 for 32x32)"
            )
        stem: list[nn.Module] = []
        for layer in range(stem_depth):
            stem += [
                nn.Conv2d(channels if layer == 0 else stem_channels, stem_channels, 3, 1, 1, bias=False),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(),
            ]
        self.stem = nn.Sequential(*stem)
        in_channels = stem_channels if stem_depth else channels
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size)
        tokens = (height // patch_size) * (width // patch_size)
        self.transformer = TokenClassifier(tokens, dim, depth, heads, mlp_ratio, dropout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.patch_embed(self.stem(x)).flatten(2).transpose(1, 2))


class PixelAttention(nn.Module):
    """Self-attention over single pixels: each pixel's values, linearly embedded, are one token, with a learned
    position embedding and a class token (the transformer of ViT with patch size 1). Attention costs grow with
    the square of the pixel count, so it is for small images."""

    max_pixels = 32 * 32

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        dim: int = 32,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images; at most 32x32 pixels.
            num_classes: number of logits.
            dim: token width.
            depth: number of transformer blocks.
            heads: attention heads.
            mlp_ratio: hidden width of each block's MLP, as a multiple of dim.
            dropout: dropout on the attention weights and on both residual branches.
        """
        super().__init__()
        channels, height, width = image_shape
        if height * width > self.max_pixels:
            raise ValueError(
                f"pixel_attention takes at most {self.max_pixels} pixels, got {height}x{width}; "
                "pass --data.image_size 28 (or smaller)"
            )
        self.embed = nn.Linear(channels, dim)
        self.transformer = TokenClassifier(height * width, dim, depth, heads, mlp_ratio, dropout, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.embed(x.flatten(2).transpose(1, 2)))


class HybridViT(ViT):
    """The ViT with a convolutional stem in front (ViT sec. 3.1, "hybrid architecture"): `ViT` with stem_depth
    2 by default; the other options are ViT's."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, stem_depth: int = 2, **kwargs) -> None:
        super().__init__(image_shape, num_classes, stem_depth=stem_depth, **kwargs)
