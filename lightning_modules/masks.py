"""Inpainting masks, for any model with `inpaint(x, mask)` (the Inpaints contract): 1 marks a known pixel,
0 one to fill in. Each is (1 or B, 1, H, W) and broadcasts over channels."""

import torch


def box_mask(shape: tuple[int, ...], fraction: float = 0.5) -> torch.Tensor:
    """1 = known: everything but a centred square covering `fraction` of the image side."""
    *_, height, width = shape
    mask = torch.ones(1, 1, height, width)
    h, w = round(height * fraction), round(width * fraction)
    top, left = (height - h) // 2, (width - w) // 2
    mask[..., top : top + h, left : left + w] = 0
    return mask


def random_pixel_mask(shape: tuple[int, ...], known_fraction: float = 0.2, generator=None) -> torch.Tensor:
    """1 = known: a random subset of pixels, the same for every channel, drawn per image."""
    batch, _, height, width = shape
    return (torch.rand(batch, 1, height, width, generator=generator) < known_fraction).float()


def grid_mask(shape: tuple[int, ...], stride: int = 2) -> torch.Tensor:
    """1 = known: one pixel in every stride x stride cell (stride 2: every other pixel of every other row),
    the regular grid of a super-resolution by `stride`."""
    *_, height, width = shape
    mask = torch.zeros(1, 1, height, width)
    mask[..., ::stride, ::stride] = 1
    return mask


MASKS = {
    "box": lambda shape: box_mask(shape, 0.5),
    "random": lambda shape: random_pixel_mask(shape, 0.2),
    "grid": lambda shape: grid_mask(shape, 2),
}
