"""Walks through a model's latent space, decoded to images: interpolations between test images, a random
walk around one, and, for a 2-D latent, the decoded latent plane."""

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from callbacks.image_batches import first_test_images, is_due, output_folder, write_grid
from lightning_modules.protocols import Encodes, require


def lerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation (1 - t) z0 + t z1 for each t; z0, z1 (D,), t (T,) -> (T, D)."""
    return (1 - t)[:, None] * z0 + t[:, None] * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; for latents, White 2016):
    sin((1 - t) omega) / sin(omega) z0 + sin(t omega) / sin(omega) z1, omega the angle between z0 and z1.
    It keeps the norm of Gaussian samples typical along the path; falls back to lerp for parallel vectors."""
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-4:
        return lerp(z0, z1, t)
    return (torch.sin((1 - t) * omega)[:, None] * z0 + torch.sin(t * omega)[:, None] * z1) / torch.sin(omega)


def random_walk(z0: torch.Tensor, steps: int, step_size: float, generator: torch.Generator) -> torch.Tensor:
    """z0 and `steps - 1` further points, each the last plus step_size * eps, eps ~ N(0, I): (steps, D)."""
    noise = torch.randn(steps - 1, len(z0), generator=generator).to(z0) * step_size
    return torch.cat([z0[None], z0 + noise.cumsum(0)])


def latent_plane(low: torch.Tensor, high: torch.Tensor, side: int) -> torch.Tensor:
    """A side x side grid of 2-D points spanning [low, high] per axis, row by row, top row high in z_2."""
    z1 = torch.linspace(float(low[0]), float(high[0]), side)
    z2 = torch.linspace(float(high[1]), float(low[1]), side)
    return torch.stack(torch.meshgrid(z2, z1, indexing="ij")[::-1], dim=-1).reshape(-1, 2).to(low)


class LatentWalk(L.Callback):
    """Every `every_n_epochs` training epochs and after the last, decodes walks through the latent space of any model with
    `encode` and `decode`, and writes each as an image grid to TensorBoard (`latent_walk/<name>`) and as
    `<run folder>/latent_walk/<name>_epoch<E>.png`:
      lerp, slerp   one row per pair of test images, from the first's code to the second's;
      random_walk   one row per test image, a Gaussian random walk from its code;
      plane         (2-D latents only) the decoded grid over the plane spanned by the test codes.

    The convention a model follows (the zoo's AE, DAE and VAE do):
      encode(x: (B, C, H, W) images in [0, 1]) -> (B, D) latent codes: the deterministic code used for walks
          (for a VAE, the posterior mean E_q[z|x]);
      decode(z: (B, D)) -> (B, C, H, W) images in [0, 1] (for a VAE, the decoder's mean image).
    A code with more dimensions, (B, ...) (DDPM's DDIM-inverted noise image), is walked as a flat vector.
    Runs without a logger (scripts/benchmark.py) write nothing.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        pairs: int = 6,
        steps: int = 10,
        walk_step_size: float = 0.5,
        plane_side: int = 15,
        seed: int = 0,
    ) -> None:
        """
        Args:
            every_n_epochs: write the walks at the end of every this many training epochs (and of the last).
            pairs: rows of the interpolation grids (pairs of test images) and of the random walk.
            steps: images per row, endpoints included.
            walk_step_size: standard deviation of each random-walk step, in latent units.
            plane_side: images per side of the decoded latent plane (2-D latents).
            seed: seed of the random walk, so the grids of successive epochs compare.
        """
        if every_n_epochs < 1 or pairs < 1 or steps < 2 or plane_side < 2:
            raise ValueError("LatentWalk needs every_n_epochs >= 1, pairs >= 1, steps >= 2 and plane_side >= 2")
        self.every_n_epochs, self.pairs, self.steps = every_n_epochs, pairs, steps
        self.walk_step_size, self.plane_side, self.seed = walk_step_size, plane_side, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, Encodes, "LatentWalk")

    @torch.no_grad()
    def walks(self, pl_module: L.LightningModule, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoded walks as image batches, row by row, keyed by name; `images` are >= 2 * pairs test
        images, whose codes are the walks' starting points."""
        encoded = pl_module.encode(images)
        # Walk in flat vectors; a model whose code has a shape (a diffusion model's noise image) gets it back.
        code_shape, codes = encoded.shape[1:], encoded.flatten(1)
        t = torch.linspace(0, 1, self.steps, device=codes.device, dtype=codes.dtype)
        pairs = min(self.pairs, len(codes) // 2)
        starts, ends = codes[0 : 2 * pairs : 2], codes[1 : 2 * pairs : 2]
        generator = torch.Generator().manual_seed(self.seed)
        paths = {
            "lerp": torch.cat([lerp(a, b, t) for a, b in zip(starts, ends, strict=True)]),
            "slerp": torch.cat([slerp(a, b, t) for a, b in zip(starts, ends, strict=True)]),
            "random_walk": torch.cat([random_walk(a, self.steps, self.walk_step_size, generator) for a in starts]),
        }
        if codes.shape[1] == 2:
            paths["plane"] = latent_plane(codes.min(0).values, codes.max(0).values, self.plane_side)
        return {name: pl_module.decode(z.reshape(-1, *code_shape)) for name, z in paths.items()}

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_due(trainer, self.every_n_epochs):
            return
        folder = output_folder(trainer, "latent_walk")
        if folder is None:
            return
        images, _ = first_test_images(trainer, pl_module, 2 * self.pairs)
        if len(images) < 2:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            for name, decoded in self.walks(pl_module, images).items():
                columns = self.plane_side if name == "plane" else self.steps
                write_grid(trainer, folder, f"latent_walk/{name}", decoded, nrow=columns)
        finally:
            pl_module.train(was_training)
