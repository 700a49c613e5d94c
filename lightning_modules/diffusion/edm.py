"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models") as a
LightningModule: a raw network F wrapped in the preconditioning of Table 1, trained on the weighted denoising loss
of eq. 2, sampled with the Heun sampler (Algorithm 1) or the stochastic one (Algorithm 2, edm_sampling.py), with
class conditioning and classifier-free guidance (Ho & Salimans 2022), and inverted to its noise by the
probability-flow ODE. Images are mapped from the DataModule's [0, 1] to the model's [-1, 1] here and back."""

import math
import re

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torch import Tensor, nn

from lightning_modules.blocks.unet import UNet
from lightning_modules.diffusion.ddpm import DenoiserFactory
from lightning_modules.diffusion.denoising import DenoisingModel, sampler_scores
from lightning_modules.diffusion.edm_sampling import Denoise, edm_sigmas, heun_sample, ode_encode, stochastic_sample
from lightning_modules.metrics import SAMPLE_BATCH, ClassifierFeatures, predicted_labels
from lightning_modules.optim import WarmupDecay, decay_groups, warmup_decay

# The U-Net's sinusoidal time embedding has frequencies 1 to 1e-4, chosen for DDPM's timesteps 0..999. Table 1's
# c_noise = ln(sigma) / 4 spans only 2.6 over sigma in [0.002, 80], where all but the top few frequencies are
# constant; scaled by 250 it spans about 660, as DDPM's timesteps do. The network is otherwise unchanged.
NOISE_EMBEDDING_SCALE = 250.0


class EDMPrecond(nn.Module):
    """The denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) of eq. 7 with Table 1's coefficients, around
    any raw network F called as F(x, t, y) (the U-Net)."""

    def __init__(self, network: nn.Module, sigma_data: float, noise_embedding_scale: float = 1.0) -> None:
        super().__init__()
        self.network, self.sigma_data, self.noise_embedding_scale = network, sigma_data, noise_embedding_scale

    def coefficients(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Table 1: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
        c_noise = ln(s) / 4: input and target of F at unit variance (eqs. 114-117)."""
        total = sigma**2 + self.sigma_data**2
        return self.sigma_data**2 / total, sigma * self.sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4

    def forward(self, x: Tensor, sigma: Tensor | float, y: Tensor | None = None) -> Tensor:
        """x: (B, ...) noisy data; sigma: its noise level, one per example (B,) or one for all; y: labels or None."""
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        per_example = (-1, *[1] * (x.dim() - 1))
        raw = self.network(c_in.view(per_example) * x, c_noise * self.noise_embedding_scale, y)
        return c_skip.view(per_example) * x + c_out.view(per_example) * raw.to(x.dtype)


def edm_loss(denoise: Denoise, y: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float) -> Tensor:
    """Eq. 2 with Table 1's weight: lambda(sigma) ||D(y + sigma n; sigma) - y||^2, lambda(sigma) = (sigma^2 +
    sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2, averaged over examples and pixels. y: clean data (B, ...);
    sigma: (B,) noise levels; noise: unit Gaussian n of y's shape; denoise(x, sigma) takes per-example sigma."""
    per_example = (-1, *[1] * (y.dim() - 1))
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    return (weight.view(per_example) * (denoise(y + sigma.view(per_example) * noise, sigma) - y) ** 2).mean()


def draw_sigmas(n: int, p_mean: float, p_std: float, device, generator: torch.Generator | None = None) -> Tensor:
    """Training noise levels: ln(sigma) ~ N(P_mean, P_std^2) (Table 1, eq. 2's p_train)."""
    return (p_mean + p_std * torch.randn(n, device=device, generator=generator)).exp()


def parse_sampler(spec: str) -> dict[str, object]:
    """The `sample` arguments of a sampler name: "heunN" (N Heun steps, 2N - 1 evaluations), optionally followed by
    "wG" for guidance weight G, e.g. heun18w2."""
    match = re.fullmatch(r"heun(\d+)(?:w(\d+(?:\.\d*)?))?", spec)
    if not match or int(match[1]) < 1:
        raise ValueError(f"sampler {spec!r} unknown; write heunN or heunNwG, e.g. heun18 or heun18w2")
    return {"steps": int(match[1]), **({"guidance": float(match[2])} if match[2] else {})}


class EDM(DenoisingModel):
    """EDM with class conditioning and classifier-free guidance.

    Methods: `sample(n)`, `encode(x)` (probability-flow ODE to the noise) and `decode(z)`, `evaluate(datamodule)`."""

    def __init__(
        self,
        denoiser: DenoiserFactory | None = None,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        class_conditional: bool = False,
        label_dropout: float = 0.1,
        sigma_data: float = 0.5,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        rho: float = 7.0,
        sample_steps: PositiveInt = 18,
        guidance: float = 1.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        inversion_steps: PositiveInt = 18,
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        compile: bool = False,
    ) -> None:
        """
        Args:
            denoiser: the raw network F, called as denoiser(channels, num_classes or None) (a class path on the
                command line, as DDPM's); None picks UNet with its defaults.
            image_shape: (C, H, W) of the images; set from the DataModule by scripts/fit.py.
            num_classes: classes of the data; set from the DataModule (used when class_conditional).
            class_conditional: condition F on the label; the label num_classes is the learned "no label".
            label_dropout: probability of training on the "no label" instead of the label (for guidance).
            sigma_data: standard deviation of the images in [-1, 1] (Table 1; 0.5 is the paper's CIFAR-10 value).
            p_mean, p_std: ln(sigma) ~ N(p_mean, p_std^2) in training (Table 1: -1.2, 1.2).
            sigma_min, sigma_max, rho: the sampling noise levels of eq. 5 (Table 1: 0.002, 80, 7).
            sample_steps: default Heun steps N of `sample` (2N - 1 network evaluations).
            guidance: default guidance weight w: 1 plain conditional, 0 unconditional, > 1 guided.
            s_churn, s_tmin, s_tmax, s_noise: Algorithm 2's stochasticity, for `sample(stochastic=True)`.
            inversion_steps: Heun steps of `encode` and `decode`.
            lr: AdamW learning rate.
            weight_decay: AdamW decoupled weight decay of the weight matrices (not biases or norms).
            warmup_steps: linear learning-rate warm-up, then constant.
            compile: run the preconditioned denoiser through torch.compile, in place: the state_dict keys stay the
                plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        self.save_hyperparameters()
        if image_shape is None:
            raise ValueError("EDM models images: the DataModule gives no image_shape; pass --data mnist or similar")
        if class_conditional and not num_classes:
            raise ValueError("--model.class_conditional needs labelled data: the DataModule gives no num_classes")
        if not 0 <= label_dropout < 1:
            raise ValueError(f"--model.label_dropout must be in [0, 1), got {label_dropout}")
        if sigma_data <= 0:
            raise ValueError(f"--model.sigma_data must be > 0 (the images' standard deviation), got {sigma_data}")
        classes = num_classes if class_conditional else None
        network = (denoiser or UNet)(image_shape[0], classes)
        self.denoiser = EDMPrecond(network, sigma_data, NOISE_EMBEDDING_SCALE)
        if compile:
            self.denoiser.compile()

    # --- the model's range and its guided denoiser -------------------------------------------------------
    def to_model(self, x: Tensor) -> Tensor:
        return x * 2 - 1

    def from_model(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def null_labels(self, n: int) -> Tensor | None:
        """The learned "no label" (the U-Net's extra class row), or None for an unconditional model."""
        h = self.hparams
        return torch.full((n,), h.num_classes, device=self.device) if h.class_conditional else None

    def guided(self, y: Tensor | None, guidance: float) -> Denoise:
        """D(x; sigma) for the labels y with classifier-free guidance: D(x|null) + w (D(x|y) - D(x|null))
        (Ho & Salimans 2022, eq. 6 in denoiser form); w = 1 and w = 0 need one evaluation, others one of twice
        the batch."""
        if y is None or guidance == 1:
            return lambda x, sigma: self.denoiser(x, sigma, y)
        null = self.null_labels(len(y))
        if guidance == 0:
            return lambda x, sigma: self.denoiser(x, sigma, null)

        def denoise(x: Tensor, sigma: Tensor) -> Tensor:
            conditional, unconditional = self.denoiser(torch.cat([x, x]), sigma, torch.cat([y, null])).chunk(2)
            return unconditional + guidance * (conditional - unconditional)

        return denoise

    # --- training ---------------------------------------------------------------------------------------
    def loss(self, batch, generator: torch.Generator | None = None) -> Tensor:
        images = self.to_model(batch[0])
        y = batch[1] if self.hparams.class_conditional else None
        if y is not None and self.hparams.label_dropout > 0:
            dropped = torch.rand(len(y), device=y.device, generator=generator) < self.hparams.label_dropout
            y = torch.where(dropped, self.null_labels(len(y)), y)
        sigma = draw_sigmas(len(images), self.hparams.p_mean, self.hparams.p_std, images.device, generator)
        noise = torch.randn(images.shape, device=images.device, generator=generator)
        return edm_loss(lambda x, s: self.denoiser(x, s, y), images, sigma, noise, self.hparams.sigma_data)

    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.AdamW(decay_groups(self.parameters(), h.weight_decay), lr=h.lr)
        return warmup_decay(optimizer, WarmupDecay("constant", warmup_steps=h.warmup_steps))

    # --- generation -------------------------------------------------------------------------------------
    def sigmas(self, steps: int | None) -> Tensor:
        h = self.hparams
        return edm_sigmas(steps or h.sample_steps, h.sigma_min, h.sigma_max, h.rho)

    def labels(self, n: int, label: int | None, y: Tensor | None) -> Tensor | None:
        """Per-sample labels: y, else `label` for all n, else 0, 1, 2, ... cycling; None when unconditional."""
        h = self.hparams
        if not h.class_conditional:
            if label is not None or y is not None:
                raise ValueError("--label: this EDM is not class-conditional; drop it")
            return None
        if y is not None:
            return y.to(self.device)
        if label is not None and not 0 <= label < h.num_classes:
            raise ValueError(f"--label {label} is not a class; pass one in 0..{h.num_classes - 1}")
        return (
            torch.full((n,), label, device=self.device)
            if label is not None
            else torch.arange(n, device=self.device) % h.num_classes
        )

    @torch.no_grad()
    def sample(
        self,
        n: int,
        steps: int | None = None,
        guidance: float | None = None,
        label: int | None = None,
        y: Tensor | None = None,
        stochastic: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`n` images in [0, 1] from `steps` Heun steps (default sample_steps; 2 steps - 1 evaluations) with
        guidance weight `guidance` (default the model's) for the labels y, or `label` for all, or 0, 1, 2, ...;
        `stochastic` uses Algorithm 2 with the model's s_churn, s_tmin, s_tmax, s_noise."""
        h = self.hparams
        guidance = h.guidance if guidance is None else guidance
        labels = self.labels(n, label, y)
        if labels is None and guidance != 1:
            raise ValueError(f"--guidance {guidance}: guidance needs a class-conditional EDM; drop it")
        sigmas = self.sigmas(steps)
        x = torch.randn((n, *h.image_shape), device=self.device, generator=generator) * h.sigma_max
        denoise = self.guided(labels, guidance)
        if stochastic:
            x = stochastic_sample(denoise, x, sigmas, h.s_churn, h.s_tmin, h.s_tmax, h.s_noise, generator)
        else:
            x = heun_sample(denoise, x, sigmas)
        return self.from_model(x)

    @torch.no_grad()
    def encode(self, x: Tensor, steps: int | None = None) -> Tensor:
        """The probability-flow ODE from images in [0, 1] to their noise at sigma_max, divided by sigma_max: an
        image-shaped latent of unit scale (the "no label" denoiser, so it needs no labels)."""
        denoise = self.guided(self.null_labels(len(x)), 1.0)
        return (
            ode_encode(denoise, self.to_model(x), self.sigmas(steps or self.hparams.inversion_steps))
            / self.hparams.sigma_max
        )

    @torch.no_grad()
    def decode(self, z: Tensor, steps: int | None = None) -> Tensor:
        """The Heun sampler from the latent z of `encode` back to images in [0, 1]."""
        denoise = self.guided(self.null_labels(len(z)), 1.0)
        x = heun_sample(denoise, z * self.hparams.sigma_max, self.sigmas(steps or self.hparams.inversion_steps))
        return self.from_model(x)

    # --- evaluation -------------------------------------------------------------------------------------
    def evaluate(
        self,
        datamodule: L.LightningDataModule | None,
        seed: int = 0,
        samplers: str = "heun18",
        fid_classifier: str | None = None,
        samples: int = 1000,
        label_classifier: str | None = None,
    ) -> dict[str, float]:
        """What scripts/evaluate.py prints: the classifier FID of `samples` samples per sampler (a comma-separated
        list of heunN / heunNwG) against the test split, and the ODE inversion error (mean squared, in [0, 1]
        pixel units) of its first 64 test images. Without `--fid_classifier CKPT` the FID is left out. A
        class-conditional EDM draws its samples for the labels 0, 1, 2, ... and also gets `label_acc_<sampler>`:
        the share of them the classifier gives their label (fidelity to the label, which guidance buys with
        diversity, and the FID weighs both); `label_classifier` names another classifier checkpoint for that
        share (a stronger one than the FID's feature extractor), by default the FID's."""
        if label_classifier and not (self.hparams.class_conditional and fid_classifier):
            raise ValueError(
                "--label_classifier scores the labels of a class-conditional EDM's samples, drawn for the FID: "
                "pass --fid_classifier too, with a class-conditional checkpoint"
            )
        sample_args = {spec: parse_sampler(spec) for spec in (s.strip() for s in samplers.split(",")) if spec}
        on_samples = None
        if self.hparams.class_conditional and fid_classifier:
            features = ClassifierFeatures.from_checkpoint(label_classifier or fid_classifier)

            def on_samples(spec: str, drawn: Tensor) -> dict[str, float]:
                # draw_samples asked for SAMPLE_BATCH at a time, and each call's labels start again at 0.
                wanted = torch.cat([self.labels(len(chunk), None, None).cpu() for chunk in drawn.split(SAMPLE_BATCH)])
                return {f"label_acc_{spec}": float((predicted_labels(features, drawn) == wanted).double().mean())}

        return sampler_scores(self, datamodule, sample_args, fid_classifier, samples, seed, on_samples=on_samples)
