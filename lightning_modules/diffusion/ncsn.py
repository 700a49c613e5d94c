"""NCSN (Song & Ermon 2019) as a LightningModule: a noise-conditional score network s(x, sigma) trained by denoising
score matching at geometric noise levels, sampled with annealed Langevin dynamics (lightning_modules/diffusion/
langevin.py) or, for comparison, plain Langevin at the smallest level. The network is injected (blocks/unet.py,
blocks/mlp_denoiser.py, as DDPM's); images are mapped from the DataModule's [0, 1] to the model's [-1, 1] here and
back, nowhere else; toy 2-D points are modelled as they are."""

import math
import re
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor, nn

from lightning_modules.blocks.mlp_denoiser import MLPDenoiser
from lightning_modules.blocks.unet import UNet
from lightning_modules.diffusion.ddpm import IMAGE_DENOISERS, MLP_PATH, DenoiserFactory
from lightning_modules.diffusion.denoising import DenoisingModel, sampler_scores
from lightning_modules.diffusion.langevin import annealed_langevin, geometric_sigmas, langevin
from lightning_modules.metrics import draw_samples

# The network's time input for the noise level sigma: its position between sigma_1 (0) and sigma_L (TIME_SCALE) in
# log sigma. At the trained levels this is the level index times TIME_SCALE / (L - 1), so a network built for
# DDPM's integer timesteps in [0, 1000) sees inputs over the range its sinusoidal embedding was made for (the
# bare index 0..9 would use only its fastest frequencies); in log sigma it is continuous, so the score can also
# be asked at a sigma between the levels.
TIME_SCALE = 1000.0


def dsm_loss(score: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """Denoising score matching (Song & Ermon 2019, eq. 5), weighted by lambda(sigma) = sigma^2 and averaged over
    the examples' levels (eq. 6): mean of 1/2 sigma^2 || s(x~, sigma) + (x~ - x) / sigma^2 ||^2, where
    x~ = x + sigma * noise, so (x~ - x) / sigma^2 = noise / sigma; the norm sums over all but the first dimension.

    Args:
        score: (B, ...) the network's score at x~.
        noise: (B, ...) the standard normal noise that made x~.
        sigma: (B,) each example's noise level.
    """
    sigma = sigma.view(-1, *[1] * (noise.dim() - 1))
    return (0.5 * sigma**2 * (score + noise / sigma) ** 2).flatten(1).sum(1).mean()


def build_network(factory: DenoiserFactory | None, points: bool, width: int) -> nn.Module:
    """The unconditional network of `factory` for `width` channels (images) or point dimensions (points); None picks
    UNet (its defaults) for images and MLPDenoiser for points. Refuses a network made for the other kind of data."""
    network = (factory or (MLPDenoiser if points else UNet))(width, None)
    if points and isinstance(network, IMAGE_DENOISERS):
        raise ValueError(
            f"--model.denoiser: {type(network).__name__} models images, but the data are {width}-D points; "
            f"pass --model.denoiser {MLP_PATH}"
        )
    if not points and isinstance(network, MLPDenoiser):
        raise ValueError(
            "--model.denoiser: MLPDenoiser models points (--data toy2d); for images pass "
            "--model.denoiser lightning_modules.blocks.unet.UNet"
        )
    return network


def parse_sampler(spec: str) -> dict[str, object]:
    """The `sample` arguments of a sampler name: "annealed" or "plain", optionally followed by its steps (per level
    for annealed, in all for plain), e.g. annealed5 or plain400."""
    match = re.fullmatch(r"(annealed|plain)(\d*)", spec)
    if not match or match[2] == "0":
        raise ValueError(f"sampler {spec!r} unknown; write annealed, plain, annealedT or plainN, e.g. annealed5")
    return {"sampler": match[1], **({"steps": int(match[2])} if match[2] else {})}


def nearer_first_mode(points: Tensor, means: Tensor) -> float:
    """The share of `points` (N, 2) nearer to the first of two mode centres `means` (2, 2) than to the second."""
    distances = torch.cdist(points.double(), means.double())
    return float((distances[:, 0] < distances[:, 1]).double().mean())


class NCSN(DenoisingModel):
    """Noise-conditional score network with annealed Langevin sampling. Methods: `sample(n)`, `evaluate(datamodule)`."""

    def __init__(
        self,
        denoiser: DenoiserFactory | None = None,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        data_dim: int | None = None,
        sigma_max: PositiveFloat = 28.0,
        sigma_min: PositiveFloat = 0.02,
        num_levels: PositiveInt = 10,
        steps_per_level: PositiveInt = 100,
        epsilon: PositiveFloat = 8e-5,
        sampler: Literal["annealed", "plain"] = "annealed",
        final_denoise: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        compile: bool = False,
    ) -> None:
        """
        Args:
            denoiser: the score network before its division by sigma, called as denoiser(channels or point
                dimension, None) and then as net(x, t) with t the noise level's position (TIME_SCALE); None picks
                UNet (its defaults) for images and MLPDenoiser for points.
            image_shape: (C, H, W) of image data; set from the DataModule by scripts/fit.py.
            data_dim: dimension of point data (toy 2-D); set from the DataModule.
            sigma_max: sigma_1, the largest noise level: about the largest distance between two training examples
                in the model's range (Song & Ermon 2020, technique 1), so that q_sigma_1 connects all modes. Each
                config gives its data's measured value.
            sigma_min: sigma_L, the smallest noise level.
            num_levels: L, the number of geometric levels from sigma_max down to sigma_min.
            steps_per_level: T, Langevin steps per level (Algorithm 1).
            epsilon: the step size at sigma_L; level i takes alpha_i = epsilon sigma_i^2 / sigma_L^2.
            sampler: the default of `sample`: "annealed" (Algorithm 1) or "plain" (Langevin at sigma_L alone, with
                step size epsilon and as many steps, L * T, as the annealed sampler takes).
            final_denoise: end sampling with one step x + sigma_L^2 s(x, sigma_L), the posterior mean E[x | x~]
                (Tweedie's formula), which removes the noise of the last level (Song & Ermon 2020's
                "denoising" of the last sample).
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            compile: compile the network in place (torch.compile); its state_dict keys stay the plain ones.
        """
        super().__init__()
        self.save_hyperparameters()
        self.points = image_shape is None
        if self.points and not data_dim:
            raise ValueError(
                "NCSN needs image_shape (images) or data_dim (points); scripts/fit.py sets them from --data"
            )
        if sigma_min > sigma_max:
            raise ValueError(f"--model.sigma_min ({sigma_min}) is above --model.sigma_max ({sigma_max}); swap them")
        self.score_network = build_network(denoiser, self.points, data_dim if self.points else image_shape[0])
        # Recomputed from the hyper-parameters, not saved: the same levels on every load.
        self.register_buffer("sigmas", geometric_sigmas(sigma_max, sigma_min, num_levels).float(), persistent=False)
        if compile:
            self.score_network.compile()

    # --- the model's range and its score ------------------------------------------------------------------
    def to_model(self, x: Tensor) -> Tensor:
        return x if self.points else x * 2 - 1

    def from_model(self, x: Tensor) -> Tensor:
        return x if self.points else ((x + 1) / 2).clamp(0, 1)

    def level_time(self, sigma: Tensor) -> Tensor:
        """The network's time input for each noise level in sigma (B,): see TIME_SCALE."""
        span = math.log(self.hparams.sigma_max / self.hparams.sigma_min)
        if span == 0:
            return torch.zeros_like(sigma)
        return TIME_SCALE * torch.log(self.hparams.sigma_max / sigma) / span

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """s(x, sigma) = net(x, t(sigma)) / sigma: the network predicts the scaled score sigma * s, whose size is
        about 1 at every level (the score of q_sigma near the data is about noise / sigma; Song & Ermon 2020,
        technique 3), so one network serves all levels."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        return self.score_network(x, self.level_time(sigma)) / sigma.view(-1, *[1] * (x.dim() - 1))

    # --- training ---------------------------------------------------------------------------------------
    def loss(self, batch, generator: torch.Generator | None = None) -> Tensor:
        """Eq. 6 with one uniformly drawn level per example."""
        x = self.to_model(batch[0])
        level = torch.randint(0, len(self.sigmas), (x.shape[0],), device=x.device, generator=generator)
        sigma = self.sigmas[level]
        noise = torch.randn(x.shape, device=x.device, generator=generator)
        perturbed = x + sigma.view(-1, *[1] * (x.dim() - 1)) * noise
        return dsm_loss(self.score(perturbed, sigma), noise, sigma)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # --- generation -------------------------------------------------------------------------------------
    def initial(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """x_0 of Algorithm 1, uniform noise as in Song & Ermon's experiments: over the model's range [-1, 1] for
        images, over [-sigma_1, sigma_1]^D for points (a box about as wide as the data)."""
        shape = (n, self.hparams.data_dim) if self.points else (n, *self.hparams.image_shape)
        half_width = self.hparams.sigma_max if self.points else 1.0
        return (torch.rand(shape, device=self.device, generator=generator) * 2 - 1) * half_width

    @torch.no_grad()
    def sample(
        self,
        n: int,
        sampler: Literal["annealed", "plain"] | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`n` samples, images in [0, 1] (or points). sampler "annealed" (default the model's `sampler`) runs
        Algorithm 1 with `steps` per level (default steps_per_level); "plain" runs `steps` Langevin steps (default
        num_levels * steps_per_level) at sigma_L with step size epsilon."""
        h = self.hparams
        sampler = sampler or h.sampler
        x = self.initial(n, generator)
        if sampler == "annealed":
            x = annealed_langevin(self.score, x, self.sigmas, steps or h.steps_per_level, h.epsilon, generator)
        elif sampler == "plain":
            steps = steps or h.num_levels * h.steps_per_level
            x = langevin(self.score, x, float(self.sigmas[-1]), steps, h.epsilon, generator)
        else:
            raise ValueError(f"sampler {sampler!r} unknown; choose annealed or plain")
        if h.final_denoise:
            x = x + float(self.sigmas[-1]) ** 2 * self.score(x, float(self.sigmas[-1]))
        return self.from_model(x)

    # --- evaluation -------------------------------------------------------------------------------------
    def evaluate(
        self,
        datamodule: L.LightningDataModule | None,
        seed: int = 0,
        samplers: str = "annealed,plain",
        fid_classifier: str | None = None,
        samples: int | None = None,
    ) -> dict[str, float]:
        """What scripts/evaluate.py prints per sampler (a comma-separated list of annealed[T] / plain[N]): on the
        two-Gaussian toy (Song & Ermon 2019, Fig. 2) the share of `samples` (default 10,000) samples in the mode of
        weight 0.8, which annealed Langevin recovers and plain Langevin does not; on images the classifier FID of
        `samples` (default 1,000) samples against the test split (with `--fid_classifier CKPT`; without it, none)."""
        sample_args = {spec: parse_sampler(spec) for spec in (s.strip() for s in samplers.split(",")) if spec}
        if not self.points:
            return sampler_scores(self, datamodule, sample_args, fid_classifier, samples or 1000, seed, inversion=False)
        means = getattr(datamodule, "mode_means", None)  # Toy2DDataModule's, for the two-Gaussian mixture only
        if means is None:
            return {}
        return {
            f"major_mode_share_{spec}": nearer_first_mode(draw_samples(self, samples or 10_000, args, seed), means)
            for spec, args in sample_args.items()
        }
