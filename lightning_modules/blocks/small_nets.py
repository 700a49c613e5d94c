"""The small classic classifiers: a plain MLP, the PyTorch MNIST example conv net and LeNet-5 (LeCun et al. 1998).
Each maps (B, C, H, W) images to (B, num_classes) logits."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.activations import activation_for_width


class MLP(nn.Sequential):
    """Flatten, then `widths` hidden Linear layers with an activation each, then a Linear head."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        widths: tuple[int, ...] = (512, 512),
        activation: str = "relu",
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images.
            num_classes: number of logits.
            widths: widths of the hidden layers, in order.
            activation: a name of lightning_modules.blocks.activations (relu, gelu, silu, elu, tanh, or all:
                every one side by side on slices of each layer, lightning_modules.blocks.parallel_activations).
        """
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(image_shape)
        for hidden in widths:
            nonlinearity = activation_for_width(activation, hidden, "--model.backbone.activation")
            layers += [nn.Linear(width, hidden), nonlinearity]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class ConvNet(nn.Module):
    """The network of pytorch/examples' mnist/main.py: two 3x3 convs (32, 64), max-pool, dropout 0.25,
    Linear 128, dropout 0.5, Linear to the classes."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, hidden: int = 128) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images; H and W at least 6.
            num_classes: number of logits.
            hidden: width of the hidden Linear layer.
        """
        super().__init__()
        channels, height, width = image_shape
        if min(height, width) < 6:
            raise ValueError(f"convnet needs images of at least 6x6, got {height}x{width}; pass --data.image_size 28")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25)
        )
        flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ScaledTanh(nn.Module):
    """LeCun et al. 1998, appendix A: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3, so that f(1) = 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsampling(nn.Module):
    """LeNet-5's S layers (sec. II-B): the sum of each 2x2 neighbourhood times a trainable coefficient plus a
    trainable bias, one pair per feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.coefficient = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        summed = F.avg_pool2d(x, 2) * 4.0
        return summed * self.coefficient[:, None, None] + self.bias[:, None, None]


# Table I of LeCun et al. 1998: the S2 maps (columns 0-5) that each of the 16 C3 maps reads. It comes in three
# shapes: 6 maps read 3 contiguous inputs, 9 read 4 (6 contiguous, 3 not), 1 reads all six.
C3_TABLE = (
    [(i, (i + 1) % 6, (i + 2) % 6) for i in range(6)]
    + [tuple((i + k) % 6 for k in range(4)) for i in range(6)]
    + [(0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5)]
    + [tuple(range(6))]
)


class SparseC3(nn.Module):
    """C3 with Table I's connections: one 5x5 kernel per (output map, input map) pair of the table, 60 in all,
    scattered into a dense (16, 6, 5, 5) kernel whose other entries stay zero. So the layer has exactly the
    paper's 1,516 parameters and runs as one ordinary convolution (grouped convolutions are slow on CPUs)."""

    def __init__(self) -> None:
        super().__init__()
        pairs = [(out, inp) for out, inputs in enumerate(C3_TABLE) for inp in inputs]
        self.register_buffer("dense_index", torch.tensor([out * 6 + inp for out, inp in pairs]), persistent=False)
        fan_in = torch.tensor([len(C3_TABLE[out]) * 25 for out, _ in pairs], dtype=torch.float32)
        # Uniform in +-1/sqrt(fan_in), each map by its own fan-in, as nn.Conv2d initialises a dense kernel.
        self.weight = nn.Parameter((torch.rand(len(pairs), 25) * 2 - 1) / fan_in.sqrt()[:, None])
        bound = 1 / torch.tensor([len(inputs) * 25 for inputs in C3_TABLE], dtype=torch.float32).sqrt()
        self.bias = nn.Parameter((torch.rand(16) * 2 - 1) * bound)

    def dense_kernel(self) -> torch.Tensor:
        kernel = self.weight.new_zeros(16 * 6, 25).index_copy(0, self.dense_index, self.weight)
        return kernel.view(16, 6, 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.dense_kernel(), self.bias)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998, sec. II-B): C1 6@5x5, S2, C3 16@5x5 (Table I), S4, C5 120, F6 84, with the
    scaled tanh after each layer up to F6. Inputs are zero-padded to 32x32 as the paper centres its 28x28
    digits in a 32x32 field. The paper's output layer is a fixed (hand-set) Euclidean RBF; here a trainable
    Linear layer and cross-entropy take its place, so the count is the paper's 60,000 plus 850."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images; H and W at most 32 (padded to 32).
            num_classes: number of logits.
        """
        super().__init__()
        channels, height, width = image_shape
        if max(height, width) > 32:
            raise ValueError(f"lenet5 takes images up to 32x32, got {height}x{width}; pass --data.image_size 28")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5),  # C1
            ScaledTanh(),
            Subsampling(6),
            ScaledTanh(),
            SparseC3(),
            ScaledTanh(),
            Subsampling(16),
            ScaledTanh(),
            nn.Conv2d(16, 120, 5),  # C5: 5x5 input maps, so a full connection to 120 units
            ScaledTanh(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), ScaledTanh(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, left = (32 - height) // 2, (32 - width) // 2
        x = F.pad(x, (left, 32 - width - left, top, 32 - height - top))
        return self.head(self.features(x))
