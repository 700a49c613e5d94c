"""DDPM (Ho et al. 2020) as a LightningModule: a time-conditioned denoiser trained on the noise-prediction loss,
sampled with the ancestral sampler or DDIM (Song et al. 2021), inverted to its noise latent, and used for
inpainting. The mathematics lives in lightning_modules/diffusion/gaussian_diffusion.py; the network is injected
(blocks/unet.py, blocks/mlp_denoiser.py). Images are mapped from the DataModule's [0, 1] to the model's [-1, 1]
here and back, nowhere else; toy 2-D points are modelled as they are."""

from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from lightning_modules.blocks.mlp_denoiser import MLPDenoiser
from lightning_modules.blocks.unet import MultiHeadUNet, UNet
from lightning_modules.diffusion.denoising import DenoisingModel, sampler_scores
from lightning_modules.diffusion.gaussian_diffusion import (
    NoiseSchedule,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    denoising_loss,
    eps_from_v,
    inpaint,
)
from lightning_modules.optim import WarmupDecay, warmup_decay

# A denoiser class with its options bound: called with the data's channels (or point dimension) and the number
# of classes it is conditioned on (None: unconditional). On the command line, a class path whose init_args
# leave out those two first parameters.
DenoiserFactory = Callable[[int, int | None], nn.Module]
IMAGE_DENOISERS = (UNet, MultiHeadUNet)
MLP_PATH = f"{MLPDenoiser.__module__}.{MLPDenoiser.__qualname__}"


def parse_sampler(spec: str) -> dict[str, object]:
    """The `sample` arguments of a sampler name: "ddpm" (all T steps) or "ddimN" (N DDIM steps, eta 0)."""
    if spec == "ddpm":
        return {"sampler": "ddpm"}
    if spec.startswith("ddim") and spec[4:].isdigit():
        return {"sampler": "ddim", "steps": int(spec[4:]), "eta": 0.0}
    raise ValueError(f"sampler {spec!r} unknown; write ddpm or ddimN, e.g. ddim50")


class DDPM(DenoisingModel):
    """Denoising diffusion probabilistic model with DDIM sampling and inversion.

    Methods: `sample(n)`, `encode(x)` (DDIM inversion) and `decode(z)`, `inpaint(x, mask)`,
    `evaluate(datamodule)`."""

    def __init__(
        self,
        denoiser: DenoiserFactory | None = None,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        data_dim: int | None = None,
        num_classes: int | None = None,
        class_conditional: bool = False,
        schedule: Literal["linear", "cosine"] = "linear",
        timesteps: PositiveInt = 1000,
        prediction: Literal["eps", "v"] = "eps",
        lr: float = 2e-4,
        warmup_steps: int = 0,
        sampler: Literal["ddpm", "ddim"] = "ddim",
        sample_steps: PositiveInt = 50,
        eta: float = 0.0,
        clip_denoised: bool = True,
        inversion_steps: PositiveInt = 100,
        inversion_refine: int = 1,
        compile: bool = False,
    ) -> None:
        """
        Args:
            denoiser: the network, called as denoiser(channels or point dimension, num_classes or None); None
                picks UNet (its defaults) for images and MLPDenoiser for points. The config's is a 0.69M UNet.
            image_shape: (C, H, W) of image data; set from the DataModule by scripts/fit.py.
            data_dim: dimension of point data (toy 2-D); set from the DataModule.
            num_classes: classes of the data; set from the DataModule (used when class_conditional).
            class_conditional: condition the denoiser on the label (sampling then takes labels `y`).
            schedule: "linear" (Ho et al.: 1e-4 to 0.02) or "cosine" (Nichol & Dhariwal 2021).
            timesteps: T.
            prediction: the network's target: "eps" (Ho et al. eq. 14) or "v" (Salimans & Ho 2022).
            lr: Adam learning rate.
            warmup_steps: linear learning-rate warm-up (Ho et al. use 5000), then constant.
            sampler: the default of `sample`: "ddpm" (ancestral, T steps) or "ddim".
            sample_steps: default number of DDIM steps.
            eta: default DDIM stochasticity (0 deterministic, 1 with every step = DDPM).
            clip_denoised: clip each step's predicted x_0 to the image range [-1, 1] when sampling (as Ho et al.'s
                and Song et al.'s code do); inversion never clips.
            inversion_steps: DDIM steps of `encode` and `decode`.
            inversion_refine: fixed-point iterations per inversion step (0 = plain DDIM inversion; each one
                costs a network evaluation and makes decode(encode(x)) much closer to x).
            compile: compile the denoiser in place (torch.compile); its state_dict keys stay the plain ones.
        """
        super().__init__()
        self.save_hyperparameters()
        self.points = image_shape is None
        if self.points and not data_dim:
            raise ValueError(
                "DDPM needs image_shape (images) or data_dim (points); scripts/fit.py sets them from --data"
            )
        if class_conditional and not num_classes:
            raise ValueError("--model.class_conditional needs labelled data: the DataModule gives no num_classes")
        self.denoiser = self.build_denoiser(denoiser)
        self.schedule = NoiseSchedule(schedule, timesteps)
        if compile:
            self.denoiser.compile()  # in place, as the GPT does: checkpoints keep the plain module's keys

    def build_denoiser(self, factory: DenoiserFactory | None) -> nn.Module:
        h = self.hparams
        classes = h.num_classes if h.class_conditional else None
        if factory is None:
            factory = MLPDenoiser if self.points else UNet
        network = factory(h.data_dim if self.points else h.image_shape[0], classes)
        if self.points and isinstance(network, IMAGE_DENOISERS):
            raise ValueError(
                f"--model.denoiser: {type(network).__name__} models images, but the data are {h.data_dim}-D points; "
                f"pass --model.denoiser {MLP_PATH}"
            )
        if not self.points and isinstance(network, MLPDenoiser):
            raise ValueError(
                "--model.denoiser: MLPDenoiser models points (--data toy2d); for images pass "
                "--model.denoiser lightning_modules.blocks.unet.UNet"
            )
        return network

    # --- the model's range and its noise prediction ------------------------------------------------------
    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.points else x * 2 - 1

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.points else ((x + 1) / 2).clamp(0, 1)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The noise in x_t as the network sees it, whatever its training target."""
        out = self.denoiser(x_t, t, y)
        return out if self.hparams.prediction == "eps" else eps_from_v(x_t, out, self.schedule.alpha_bar[t])

    def eps_fn(self, y: torch.Tensor | None = None):
        return lambda x_t, t: self.predict_eps(x_t, t, y)

    # --- training ---------------------------------------------------------------------------------------
    def split(self, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, labels = batch[0], (batch[1] if len(batch) > 1 else None)
        return self.to_model(x), labels if self.hparams.class_conditional else None

    def loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """Eq. 14 at a uniformly drawn timestep per example (algorithm 1)."""
        x0, y = self.split(batch)
        t = torch.randint(0, self.schedule.timesteps, (x0.shape[0],), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        prediction = self.denoiser(x_t, t, y)
        return denoising_loss(prediction, x0, noise, self.schedule.alpha_bar[t], self.hparams.prediction)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return warmup_decay(optimizer, WarmupDecay("constant", warmup_steps=self.hparams.warmup_steps))

    # --- generation -------------------------------------------------------------------------------------
    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        shape = (n, self.hparams.data_dim) if self.points else (n, *self.hparams.image_shape)
        return torch.randn(shape, device=self.device, generator=generator)

    def labels(self, n: int, y: torch.Tensor | None) -> torch.Tensor | None:
        if not self.hparams.class_conditional:
            return None
        return y.to(self.device) if y is not None else torch.arange(n, device=self.device) % self.hparams.num_classes

    @torch.no_grad()
    def sample(
        self,
        n: int,
        sampler: Literal["ddpm", "ddim"] | None = None,
        steps: int | None = None,
        eta: float | None = None,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`n` samples, images in [0, 1] (or points). sampler "ddpm" takes all T steps; "ddim" takes `steps`
        (default the model's sample_steps) with stochasticity eta. With class conditioning, `y` gives the labels
        (default 0, 1, 2, ... cycling)."""
        h = self.hparams
        sampler, steps, eta = sampler or h.sampler, steps or h.sample_steps, h.eta if eta is None else eta
        eps_fn = self.eps_fn(self.labels(n, y))
        x_T = self.noise(n, generator)
        clip = self.hparams.clip_denoised and not self.points
        if sampler == "ddpm":
            x0 = ddpm_sample(eps_fn, self.schedule, x_T, generator, clip)
        elif sampler == "ddim":
            x0 = ddim_sample(eps_fn, self.schedule, x_T, steps, eta, generator, clip)
        else:
            raise ValueError(f"sampler {sampler!r} unknown; choose ddpm or ddim")
        return self.from_model(x0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, steps: int | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM inversion: the noise latent x_T from which deterministic DDIM regenerates x (images in [0, 1]).
        The latent is an image-shaped tensor; `decode` maps it back."""
        steps = steps or self.hparams.inversion_steps
        eps_fn = self.eps_fn(self.labels(len(x), y))
        return ddim_invert(eps_fn, self.schedule, self.to_model(x), steps, self.hparams.inversion_refine)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, steps: int | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta 0) from a noise latent to an image in [0, 1]."""
        steps = steps or self.hparams.inversion_steps
        return self.from_model(ddim_sample(self.eps_fn(self.labels(len(z), y)), self.schedule, z, steps))

    @torch.no_grad()
    def inpaint(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        steps: int | None = None,
        resample: int = 1,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Complete the images x (in [0, 1]) where mask is 0, keeping them where it is 1; steps default to T
        (ancestral DDPM with eta 1). resample > 1 is RePaint's resampling."""
        steps = steps or self.schedule.timesteps
        eps_fn = self.eps_fn(self.labels(len(x), None))
        filled = inpaint(eps_fn, self.schedule, self.to_model(x), mask.to(x.device), steps, eta, resample, generator)
        return self.from_model(filled)

    # --- evaluation -------------------------------------------------------------------------------------
    def evaluate(
        self,
        datamodule: L.LightningDataModule | None,
        seed: int = 0,
        samplers: str = "ddpm,ddim50,ddim20",
        fid_classifier: str | None = None,
        samples: int = 1000,
    ) -> dict[str, float]:
        """What scripts/evaluate.py prints: the classifier FID of `samples` samples per sampler (a comma-separated
        list of ddpm / ddimN) against the test split of `datamodule`, and the DDIM inversion error (mean squared,
        in [0, 1] pixel units) of its first 64 test images. Without a classifier (`--fid_classifier CKPT`, from
        scripts/fit.py --model lenet5) the FID is left out."""
        specs = [spec.strip() for spec in samplers.split(",") if spec.strip()]
        sample_args = {spec: parse_sampler(spec) for spec in specs}
        return sampler_scores(self, datamodule, sample_args, fid_classifier, samples, seed)
