"""2-D convolution and transposed convolution from `unfold`/`fold` and matrix products, as drop-ins for
nn.Conv2d and nn.ConvTranspose2d (the same parameters under the same names, so state_dicts load either way).

Convolution (cross-correlation, as PyTorch's): `unfold` lays every receptive field out as a column of
C_in * kh * kw values, (B, C_in kh kw, L) for the L output positions; the kernel as a (C_out, C_in kh kw) matrix
times those columns is the output, (B, C_out, L), reshaped to (B, C_out, H_out, W_out).

Transposed convolution, the convolution's adjoint: each input position scatters its C_in values, times the
kernel, into a kh x kw patch of the output. The kernel (C_in, C_out kh kw) transposed times the input
(B, C_in, H W) gives one patch per input position, (B, C_out kh kw, H W), and `fold` adds the overlapping
patches into the output, placing them with the same stride, padding and dilation as the convolution it undoes;
output_padding only makes the output taller and wider by that many rows and columns (which receive no patch,
but the bias).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Pair = int | Sequence[int]


def pair(value: Pair) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
) -> torch.Tensor:
    """F.conv2d with groups=1: (B, C_in, H, W) and weight (C_out, C_in, kh, kw) -> (B, C_out, H_out, W_out)."""
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    kernel = weight.shape[2:]
    height, width = (
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, p, d, k, s in zip(x.shape[2:], padding, dilation, kernel, stride, strict=True)
    )
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C_in kh kw, L)
    out = weight.reshape(len(weight), -1) @ columns  # (C_out, C_in kh kw) @ (B, C_in kh kw, L) -> (B, C_out, L)
    if bias is not None:
        out = out + bias[:, None]
    return out.reshape(len(x), len(weight), height, width)


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    output_padding: Pair = 0,
    dilation: Pair = 1,
) -> torch.Tensor:
    """F.conv_transpose2d with groups=1: (B, C_in, H, W) and weight (C_in, C_out, kh, kw) -> (B, C_out, H_out, W_out),
    H_out = (H - 1) stride - 2 padding + dilation (kh - 1) + output_padding + 1."""
    stride, padding, output_padding, dilation = pair(stride), pair(padding), pair(output_padding), pair(dilation)
    c_in, c_out, *kernel = weight.shape
    output_size = tuple(
        (size - 1) * s - 2 * p + d * (k - 1) + op + 1
        for size, s, p, d, k, op in zip(x.shape[2:], stride, padding, dilation, kernel, output_padding, strict=True)
    )
    # (C_out kh kw, C_in) @ (B, C_in, H W) -> (B, C_out kh kw, H W): the patch each input position scatters.
    patches = weight.reshape(c_in, -1).T @ x.reshape(len(x), c_in, -1)
    out = F.fold(patches, output_size, kernel, dilation=dilation, padding=padding, stride=stride)
    return out if bias is None else out + bias[:, None, None]


def check_supported(layer: nn.Module) -> None:
    """One line for the options the matrix-product forms leave out."""
    name, torch_name = type(layer).__name__, type(layer).__bases__[0].__name__
    if layer.groups != 1:
        raise ValueError(f"{name} supports groups=1 only, got groups={layer.groups}; use nn.{torch_name} for groups")
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise ValueError(f"{name} supports zero padding given as numbers only; use nn.{torch_name} for the others")


class ScratchConv2d(nn.Conv2d):
    """nn.Conv2d whose forward is `conv2d` above: the same parameters, initialisation and state_dict keys."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_supported(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class ScratchConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d whose forward is `conv_transpose2d` above; `output_size` is honoured as PyTorch's is
    (it picks the output_padding that reaches it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_supported(self)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, output_padding, self.dilation)


CONV_IMPLEMENTATIONS = {"torch": (nn.Conv2d, nn.ConvTranspose2d), "scratch": (ScratchConv2d, ScratchConvTranspose2d)}


def conv_classes(conv_impl: str) -> tuple[type[nn.Conv2d], type[nn.ConvTranspose2d]]:
    """(convolution, transposed convolution) classes by name: PyTorch's, or the ones above."""
    if conv_impl not in CONV_IMPLEMENTATIONS:
        raise ValueError(f"--model.conv_impl must be one of {', '.join(CONV_IMPLEMENTATIONS)}, got {conv_impl!r}")
    return CONV_IMPLEMENTATIONS[conv_impl]
