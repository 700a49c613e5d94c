"""Encoder and decoder networks shared by the autoencoders (ae, dae, vqvae) and the VAE: an MLP pair and a
convolutional pair. They map images to a flat vector and a flat vector back to pixel logits, or (the
convolutional pair with `spatial=True`, for the VQ-VAE) to a grid of vectors and back; what the vectors mean
(a code, or the parameters of q(z|x)) is the model's business."""

import math
from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.blocks.activations import activation_class
from lightning_modules.blocks.conv_from_scratch import conv_classes


def mlp(widths: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers of the given widths with the activation between them and none after the last, which
    stays linear: a code or logits, not a rectified activation."""
    layers: list[nn.Module] = []
    for i, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if i > 0:
            layers.append(activation_class(activation)())
        layers.append(nn.Linear(width_in, width_out))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Image (B, C, H, W) -> flattened pixels -> hidden layers -> vector (B, out_dim)."""

    def __init__(
        self, image_shape: Sequence[int], hidden_dims: Sequence[int], out_dim: int, activation: str = "relu"
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images.
            hidden_dims: widths of the hidden layers, input side first.
            out_dim: size of the output vector.
            activation: the nonlinearity between layers (see lightning_modules.blocks.activations).
        """
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), mlp([math.prod(image_shape), *hidden_dims, out_dim], activation))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class MLPDecoder(nn.Module):
    """Vector (B, in_dim) -> hidden layers -> pixel logits (B, C, H, W)."""

    def __init__(
        self, in_dim: int, hidden_dims: Sequence[int], image_shape: Sequence[int], activation: str = "relu"
    ) -> None:
        """
        Args:
            in_dim: size of the input vector (the latent dimension).
            hidden_dims: widths of the hidden layers, latent side first.
            image_shape: (C, H, W) of the output images.
            activation: the nonlinearity between layers (see lightning_modules.blocks.activations).
        """
        super().__init__()
        widths = [in_dim, *hidden_dims, math.prod(image_shape)]
        self.net = nn.Sequential(mlp(widths, activation), nn.Unflatten(1, image_shape))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def conv_sizes(image_shape: Sequence[int], depth: int) -> list[tuple[int, int]]:
    """(H, W) after each of `depth` stride-2 convolutions with kernel 4 and padding 1, input included."""
    sizes = [tuple(image_shape[1:])]
    for _ in range(depth):
        h, w = sizes[-1]
        sizes.append(((h - 2) // 2 + 1, (w - 2) // 2 + 1))
    return sizes


class ConvEncoder(nn.Module):
    """Strided convolutions halve the image `len(channels)` times, then a linear layer gives (B, out_dim); with
    `spatial`, a 1x1 convolution gives a vector of out_dim per cell of the last feature map, (B, out_dim, h, w)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        out_dim: int,
        activation: str = "relu",
        spatial: bool = False,
        conv_impl: str = "torch",
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images.
            channels: output channels of each stride-2 convolution, input side first.
            out_dim: size of the output vector (of each cell's vector with `spatial`).
            activation: the nonlinearity after each convolution (see lightning_modules.blocks.activations).
            spatial: keep the feature map's grid (a 1x1 conv head) instead of flattening it (a linear head).
            conv_impl: "torch" (nn.Conv2d) or "scratch" (blocks/conv_from_scratch.py: unfold and matmul).
        """
        super().__init__()
        h, w = conv_sizes(image_shape, len(channels))[-1]
        if h < 1 or w < 1:
            raise ValueError(
                f"images of {image_shape[1]}x{image_shape[2]} pixels are too small for {len(channels)} stride-2 "
                "convolutions; use fewer --model.conv_channels or --model.network mlp"
            )
        conv = conv_classes(conv_impl)[0]
        layers: list[nn.Module] = []
        for width_in, width_out in zip([image_shape[0], *channels[:-1]], channels, strict=True):
            layers += [conv(width_in, width_out, 4, stride=2, padding=1), activation_class(activation)()]
        head = (
            [nn.Conv2d(channels[-1], out_dim, 1)]
            if spatial
            else [nn.Flatten(), nn.Linear(channels[-1] * h * w, out_dim)]
        )
        self.net = nn.Sequential(*layers, *head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder: a linear layer to the smallest feature map (with `spatial`, a 3x3 convolution
    of the input grid), then transposed convolutions that double it back to exactly (H, W) (odd sizes included,
    through `output_size`), giving pixel logits."""

    def __init__(
        self,
        in_dim: int,
        channels: Sequence[int],
        image_shape: Sequence[int],
        activation: str = "relu",
        spatial: bool = False,
        conv_impl: str = "torch",
    ) -> None:
        """
        Args:
            in_dim: size of the input vector (the latent dimension; of each cell's vector with `spatial`).
            channels: channels of each feature map, smallest map first (the encoder's list reversed).
            image_shape: (C, H, W) of the output images.
            activation: the nonlinearity between layers (see lightning_modules.blocks.activations).
            spatial: the input is a grid (B, in_dim, h, w) of the smallest map's size, not a flat vector.
            conv_impl: "torch" (nn.ConvTranspose2d) or "scratch" (blocks/conv_from_scratch.py: matmul and fold).
        """
        super().__init__()
        # The encoder's feature-map sizes, largest first; the decoder walks them back up.
        self.sizes = conv_sizes(image_shape, len(channels))[::-1]
        self.channels = list(channels)
        h, w = self.sizes[0]
        self.activation = activation_class(activation)()
        self.spatial = spatial
        first = nn.Conv2d(in_dim, channels[0], 3, padding=1) if spatial else nn.Linear(in_dim, channels[0] * h * w)
        self.project = nn.Sequential(first, self.activation)
        widths = [*channels, image_shape[0]]
        transposed_conv = conv_classes(conv_impl)[1]
        self.up = nn.ModuleList(
            transposed_conv(widths[i], widths[i + 1], 4, stride=2, padding=1) for i in range(len(channels))
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h, w = self.sizes[0]
        x = self.project(z) if self.spatial else self.project(z).view(len(z), self.channels[0], h, w)
        for i, layer in enumerate(self.up):
            x = layer(x, output_size=self.sizes[i + 1])
            if i < len(self.up) - 1:
                x = self.activation(x)
        return x


def make_encoder(
    network: str,
    image_shape: Sequence[int],
    hidden_dims: Sequence[int],
    conv_channels: Sequence[int],
    out_dim: int,
    activation: str = "relu",
    conv_impl: str = "torch",
) -> nn.Module:
    """The MLP or the convolutional encoder, by name (conv_impl: whose convolutions the conv one uses)."""
    if network == "mlp":
        return MLPEncoder(image_shape, hidden_dims, out_dim, activation)
    if network == "conv":
        return ConvEncoder(image_shape, conv_channels, out_dim, activation, conv_impl=conv_impl)
    raise ValueError(f"--model.network must be 'mlp' or 'conv', got {network!r}")


def make_decoder(
    network: str,
    latent_dim: int,
    hidden_dims: Sequence[int],
    conv_channels: Sequence[int],
    image_shape: Sequence[int],
    activation: str = "relu",
    conv_impl: str = "torch",
) -> nn.Module:
    """The mirror of `make_encoder`: the same widths in reverse order."""
    if network == "mlp":
        return MLPDecoder(latent_dim, list(hidden_dims)[::-1], image_shape, activation)
    if network == "conv":
        return ConvDecoder(latent_dim, list(conv_channels)[::-1], image_shape, activation, conv_impl=conv_impl)
    raise ValueError(f"--model.network must be 'mlp' or 'conv', got {network!r}")
