"""SimCLR's random views of a batch of images (Chen et al. 2020, sec. 3 and appendix A), drawn per image and
made in a few batched tensor operations on the batch's device.

torchvision.transforms.v2 draws one set of random parameters per call, which on a batch tensor means the same
crop, flip and jitter for every image; so the per-image crops, flips, jitter factors and blur widths are drawn
here as tensors and applied in one pass each (the crop and flip as one affine resampling, F.grid_sample), and
v2 gives the deterministic parts (the grey conversion)."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


def uniform(n: int, low: float, high: float, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """n draws of U[low, high) on `like`'s device (from `generator`, on its own device, when given)."""
    device = generator.device if generator is not None else like.device
    return (torch.rand(n, generator=generator, device=device) * (high - low) + low).to(like.device)


def resized_crops(
    images: Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    hflip: bool,
    generator: torch.Generator | None,
) -> Tensor:
    """RandomResizedCrop per image, resized back to the input's size (bilinear), each flipped left-right with
    probability 1/2 when `hflip`. The crop covers a fraction U[scale] of the area with a log-uniform aspect
    ratio; a side longer than the image is cut to it (where torchvision redraws, up to 10 times)."""
    n = len(images)
    area = uniform(n, *scale, images, generator)
    aspect = uniform(n, math.log(ratio[0]), math.log(ratio[1]), images, generator).exp()
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    # Centres in grid_sample's [-1, 1] coordinates, keeping the crop inside the image.
    centre_x = uniform(n, -1.0, 1.0, images, generator) * (1 - width)
    centre_y = uniform(n, -1.0, 1.0, images, generator) * (1 - height)
    flip = uniform(n, 0.0, 1.0, images, generator) < 0.5 if hflip else torch.zeros(n, dtype=torch.bool)
    sign = 1.0 - 2.0 * flip.to(images.device, images.dtype)
    zeros = torch.zeros_like(width)
    theta = torch.stack([width * sign, zeros, centre_x, zeros, height, centre_y], dim=1).view(n, 2, 3)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor x images + (1 - factor) x other, per image, clipped to [0, 1] (torchvision's _blend)."""
    return (factor.view(-1, 1, 1, 1) * images + (1 - factor.view(-1, 1, 1, 1)) * other).clamp(0.0, 1.0)


def rotate_hue(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate each RGB image's colours about the grey axis (1, 1, 1) by `turns` x 360 degrees (Rodrigues'
    formula): a hue shift that leaves grey pixels alone, as one 3 x 3 matrix per image rather than the round
    trip through HSV of torchvision's adjust_hue, which takes one factor per call."""
    angle = 2 * math.pi * turns
    cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    axis = torch.full((3,), 3**-0.5, device=images.device, dtype=images.dtype)
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=images.device, dtype=images.dtype) * 3**-0.5
    rotation = cos * torch.eye(3, device=images.device) + sin * cross + (1 - cos) * torch.outer(axis, axis)
    return torch.einsum("nij,njhw->nihw", rotation.to(images.dtype), images).clamp(0.0, 1.0)


def colour_jitter(images: Tensor, strength: float, generator: torch.Generator | None) -> Tensor:
    """SimCLR's colour distortion of strength s (appendix A): brightness, contrast and saturation factors drawn
    from U[1 - 0.8 s, 1 + 0.8 s] and a hue shift from U[-0.2 s, 0.2 s] turns, per image, in this fixed order
    (torchvision permutes the order per call). Grey images get brightness and contrast only."""
    n, colour = len(images), images.shape[1] == 3
    spread = 0.8 * strength
    images = (images * uniform(n, 1 - spread, 1 + spread, images, generator).view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    grey = TF.rgb_to_grayscale(images) if colour else images
    images = blend(
        images, grey.mean(dim=(1, 2, 3), keepdim=True), uniform(n, 1 - spread, 1 + spread, images, generator)
    )
    if colour:
        saturation = uniform(n, 1 - spread, 1 + spread, images, generator)
        images = blend(images, TF.rgb_to_grayscale(images, num_output_channels=3), saturation)
        images = rotate_hue(images, uniform(n, -0.2 * strength, 0.2 * strength, images, generator))
    return images


def gaussian_blur(images: Tensor, sigma_range: tuple[float, float], generator: torch.Generator | None) -> Tensor:
    """A Gaussian blur of its own sigma ~ U[sigma_range] per image, with a kernel 10% of the image's side (odd),
    as SimCLR blurs ImageNet (appendix A); one grouped separable convolution for the batch."""
    n, channels, height, width = images.shape
    size = max(3, int(0.1 * height) // 2 * 2 + 1)
    sigma = uniform(n, *sigma_range, images, generator)
    offsets = torch.arange(size, device=images.device, dtype=images.dtype) - size // 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma.view(-1, 1) ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (n C, size)
    flat = F.pad(images.reshape(1, n * channels, height, width), (size // 2,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, size, 1), groups=n * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, size), groups=n * channels)
    return flat.view(n, channels, height, width)


def choose(apply: Tensor, changed: Tensor, images: Tensor) -> Tensor:
    return torch.where(apply.view(-1, 1, 1, 1), changed, images)


def simclr_view(
    images: Tensor,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    jitter_strength: float = 0.5,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
    blur_min_size: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One random view of each image (B, C, H, W) in [0, 1]: crop and resize, flip, colour jitter with
    probability `jitter_p`, grey with probability `grayscale_p` (colour images), Gaussian blur with
    probability `blur_p` for images of `blur_min_size` pixels or more. Same shape, dtype and range. Drawn from
    `generator` (the global generator of the images' device when None)."""
    n = len(images)
    views = resized_crops(images, crop_scale, crop_ratio, hflip, generator)
    if jitter_strength > 0 and jitter_p > 0:
        views = choose(
            uniform(n, 0, 1, images, generator) < jitter_p, colour_jitter(views, jitter_strength, generator), views
        )
    if images.shape[1] == 3 and grayscale_p > 0:
        grey = TF.rgb_to_grayscale(views, num_output_channels=3)
        views = choose(uniform(n, 0, 1, images, generator) < grayscale_p, grey, views)
    if min(images.shape[-2:]) >= blur_min_size and blur_p > 0:
        views = choose(uniform(n, 0, 1, images, generator) < blur_p, gaussian_blur(views, (0.1, 2.0), generator), views)
    return views
