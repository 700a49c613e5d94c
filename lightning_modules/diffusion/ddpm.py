"""DDPM (Ho et al. 2020) as a LightningModule: a time-conditioned denoiser trained on the noise-prediction loss,
sampled with the ancestral sampler or DDIM (Song et al. 2021), inverted to its noise latent, and used for
inpainting. The mathematics lives in lightning_modules/diffusion/gaussian_diffusion.py, the networks in blocks/unet.py and
blocks/mlp_denoiser.py. Images are mapped from the DataModule's [0, 1] to the model's [-1, 1] here and back,
nowhere else; toy 2-D points are modelled as they are."""

import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from lightning_modules.blocks.mlp_denoiser import MLPDenoiser
from lightning_modules.blocks.unet import MultiHeadUNet, UNet
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


def parse_sampler(spec: str) -> tuple[str, int | None]:
    """ "ddpm" (all T steps) or "ddimN" (N DDIM steps, eta 0), the names used by `fid_samplers`."""
    if spec == "ddpm":
        return "ddpm", None
    if spec.startswith("ddim") and spec[4:].isdigit():
        return "ddim", int(spec[4:])
    raise ValueError(f"sampler {spec!r} unknown; write ddpm or ddimN, e.g. ddim50")


class DDPM(L.LightningModule):
    """Denoising diffusion probabilistic model with DDIM sampling and inversion.

    Methods: `sample(n)`, `encode(x)` (DDIM inversion) and `decode(z)`, `inpaint(x, mask)`, `evaluate()`."""

    throughput_unit = "samples"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        data_dim: int | None = None,
        num_classes: int | None = None,
        class_conditional: bool = False,
        network: Literal["auto", "unet", "mlp"] = "auto",
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_levels: Sequence[int] = (2,),
        num_heads: int = 4,
        dropout: float = 0.1,
        heads: int = 1,
        head_mix: Literal["mean", "conv"] = "mean",
        mlp_hidden: int = 128,
        mlp_depth: int = 3,
        schedule: Literal["linear", "cosine"] = "linear",
        timesteps: int = 1000,
        prediction: Literal["eps", "v"] = "eps",
        lr: float = 2e-4,
        warmup_steps: int = 0,
        sampler: Literal["ddpm", "ddim"] = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        clip_denoised: bool = True,
        fid_classifier: str | None = None,
        fid_samples: int = 1000,
        fid_samplers: Sequence[str] = ("ddim50",),
        inversion_test_images: int = 0,
        inversion_steps: int = 100,
        inversion_refine: int = 1,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of image data; set from the DataModule by scripts/fit.py.
            data_dim: dimension of point data (toy 2-D); set from the DataModule.
            num_classes: classes of the data; set from the DataModule (used when class_conditional).
            class_conditional: condition the denoiser on the label (sampling then takes labels `y`).
            network: "unet" for images, "mlp" for points; "auto" picks by the data.
            base_channels: U-Net width at full resolution.
            channel_mults: U-Net width multiplier per resolution level (each level halves the resolution).
            num_res_blocks: residual blocks per U-Net level.
            attention_levels: the levels (0 = full resolution) with self-attention; the middle always has it.
            num_heads: attention heads.
            dropout: dropout in the residual blocks.
            heads: K > 1 trains K small independent U-Nets on the same input (the multi-head variant).
            head_mix: how the K outputs are combined: "mean" or "conv" (concatenated, mixed by a 1x1 conv).
            mlp_hidden: width of the MLP denoiser.
            mlp_depth: hidden layers of the MLP denoiser.
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
            fid_classifier: a classifier checkpoint (scripts/fit.py --model lenet5); when set, the test computes
                the classifier FID of `fid_samples` samples per sampler in `fid_samplers` against the test set.
            fid_samples: samples drawn per sampler for the FID.
            fid_samplers: which samplers the test scores: "ddpm" or "ddimN" (N steps, eta 0).
            inversion_test_images: the test also inverts this many test images with DDIM and regenerates
                them, logging the mean squared error in [0, 1] pixel units; 0 to skip.
            inversion_steps: DDIM steps of that inversion and of `encode`/`decode`.
            inversion_refine: fixed-point iterations per inversion step (0 = plain DDIM inversion; each one
                costs a network evaluation and makes decode(encode(x)) much closer to x).
            compile: wrap the denoiser in torch.compile.
        """
        super().__init__()
        self.save_hyperparameters()
        for spec in fid_samplers:
            parse_sampler(spec)
        self.points = image_shape is None or network == "mlp"
        if self.points and not data_dim:
            raise ValueError("the mlp denoiser models points; use it with --data toy2d (or network unet for images)")
        if not self.points and image_shape is None:
            raise ValueError("the unet denoiser needs image data; use --model.network mlp for points")
        self.denoiser = self.build_denoiser()
        self.schedule = NoiseSchedule(schedule, timesteps)
        self.benchmark_metric = f"test/fid_{fid_samplers[0]}" if fid_classifier and fid_samplers else "test/loss"
        self.data_spec: dict[str, Any] | None = None
        self._real_images: list[torch.Tensor] = []

    def build_denoiser(self) -> nn.Module:
        h = self.hparams
        classes = h.num_classes if h.class_conditional else None
        if h.class_conditional and not h.num_classes:
            raise ValueError("class_conditional needs labelled data: the DataModule gives no num_classes")
        if self.points:
            return MLPDenoiser(h.data_dim, h.mlp_hidden, h.mlp_depth, num_classes=classes)
        unet_args = dict(
            in_channels=h.image_shape[0],
            base_channels=h.base_channels,
            channel_mults=tuple(h.channel_mults),
            num_res_blocks=h.num_res_blocks,
            attention_levels=tuple(h.attention_levels),
            num_heads=h.num_heads,
            dropout=h.dropout,
            num_classes=classes,
        )
        if h.heads > 1:
            return MultiHeadUNet(h.heads, mix=h.head_mix, **unet_args)
        return UNet(**unet_args)

    def setup(self, stage: str) -> None:
        if self.hparams.compile and not isinstance(self.denoiser, torch._dynamo.eval_frame.OptimizedModule):
            self.denoiser = torch.compile(self.denoiser)

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

    def count_throughput(self, batch) -> int:
        return len(batch[0])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def fixed_generator(self, batch_idx: int) -> torch.Generator:
        """Evaluation draws its timesteps and noise from the batch index: the same every epoch and run."""
        return torch.Generator(device=self.device).manual_seed(batch_idx)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch, self.fixed_generator(batch_idx)), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self.loss(batch, self.fixed_generator(batch_idx)), sync_dist=True)
        if not self.points and (self.hparams.fid_classifier or self.hparams.inversion_test_images):
            self._real_images.append(batch[0].detach().cpu())

    def on_test_epoch_end(self) -> None:
        if not self._real_images:
            return
        real, self._real_images = torch.cat(self._real_images), []
        if self.hparams.inversion_test_images:
            images = real[: self.hparams.inversion_test_images].to(self.device)
            self.log("test/inversion_mse", self.inversion_error(images), sync_dist=True)
        if self.hparams.fid_classifier:
            for name, value in self.fid_scores(real, self.hparams.fid_samplers).items():
                self.log(f"test/{name}", value, sync_dist=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return warmup_decay(optimizer, WarmupDecay("constant", warmup_steps=self.hparams.warmup_steps))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning keeps the DataModule's arguments in the checkpoint, and LightningCLI its class among them:
        # enough for evaluate() to find the real test images again.
        self.data_spec = checkpoint.get("datamodule_hyper_parameters")

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
    def inversion_error(self, images: torch.Tensor) -> torch.Tensor:
        """Mean squared error, in [0, 1] pixel units, of DDIM inversion followed by regeneration."""
        return (self.decode(self.encode(images)) - images).pow(2).mean()

    def generate_in_batches(self, n: int, spec: str, generator: torch.Generator, batch: int = 500) -> torch.Tensor:
        sampler, steps = parse_sampler(spec)
        chunks = [
            self.sample(min(batch, n - done), sampler, steps, eta=0.0, generator=generator).cpu()
            for done in range(0, n, batch)
        ]
        return torch.cat(chunks)

    def fid_scores(self, real: torch.Tensor, samplers: Sequence[str], seed: int = 0) -> dict[str, float]:
        """The classifier FID of `fid_samples` samples per sampler against the real images (the test set)."""
        from lightning_modules.metrics import ClassifierFID

        fid = ClassifierFID(self.hparams.fid_classifier, device=self.device)
        fid.set_real(real, cache_key=f"{len(real)}x{'x'.join(map(str, real.shape[1:]))}-{real.sum().item():.0f}")
        scores = {}
        for spec in samplers:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            fake = self.generate_in_batches(self.hparams.fid_samples, spec, generator)
            scores[f"fid_{spec}"] = fid.score(fake)["fid"]
        return scores

    def evaluate(
        self,
        seed: int = 0,
        samplers: str = "ddpm,ddim50,ddim20",
        fid_classifier: str | None = None,
        data_root: str | None = None,
    ) -> dict[str, float]:
        """What scripts/evaluate.py prints: the classifier FID per sampler (comma-separated list) against the
        test set of the DataModule the model was trained on, and the DDIM inversion error of 64 test images."""
        classifier = fid_classifier or self.hparams.fid_classifier
        if not classifier:
            raise ValueError("no FID classifier: pass --fid_classifier CKPT (scripts/fit.py --model lenet5)")
        if not Path(classifier).is_file():
            raise FileNotFoundError(
                f"FID classifier checkpoint {classifier} not found; train one with "
                "scripts/fit.py --model lenet5 and pass its last.ckpt"
            )
        self.hparams.fid_classifier = classifier
        real = self.test_images(data_root)
        scores = self.fid_scores(real, [s.strip() for s in samplers.split(",") if s.strip()], seed)
        scores["inversion_mse"] = float(self.inversion_error(real[:64].to(self.device)))
        return scores

    def test_images(self, data_root: str | None) -> torch.Tensor:
        """The test images of the DataModule recorded in the checkpoint, in [0, 1]."""
        if not self.data_spec or "_class_path" not in self.data_spec:
            raise ValueError("the checkpoint does not record its DataModule; it was not written by scripts/fit.py")
        module, _, name = self.data_spec["_class_path"].rpartition(".")
        kind = getattr(importlib.import_module(module), name)
        # Its hyper-parameters also hold what it logged (e.g. data_source): keep only its arguments.
        accepted = inspect.signature(kind.__init__).parameters
        args = {k: v for k, v in self.data_spec.items() if k in accepted}
        if data_root is not None:
            args["root"] = data_root
        datamodule = kind(**args)
        return datamodule.batch("test", len(datamodule.dataset("test")))[0]
