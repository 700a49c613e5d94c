"""Latent diffusion (Rombach et al. 2022): the DDPM of lightning_modules/diffusion trained on the latents of a
frozen VQ-VAE instead of on pixels. A sample is drawn by the same samplers in latent space, then quantised (a flag)
and decoded to an image."""

import contextvars
import inspect
import json
from typing import Literal

import torch
from jsonargparse.typing import PositiveInt

from lightning_modules.blocks.unet import UNet
from lightning_modules.checkpoint import CheckpointError, load_model
from lightning_modules.diffusion.ddpm import DDPM, DenoiserFactory
from lightning_modules.vq.vqvae import VQVAE

MISSING_VQVAE = (
    "ldm diffuses over the latents of a trained VQ-VAE: pass --model.vqvae_checkpoint PATH, the last.ckpt of "
    "python scripts/fit.py --model vqvae"
)
CHECKPOINT_KEY = "latent_autoencoder"  # the frozen VQ-VAE's weights and the latent scale, in this model's checkpoint


def load_vqvae(path: str, image_shape: tuple[int, int, int] | None) -> VQVAE:
    """The VQ-VAE of `path`, checked to be one and to fit the data; every failure names the flag."""
    try:
        model = load_model(path)
    except CheckpointError as error:
        raise ValueError(
            f"--model.vqvae_checkpoint: {error}; make one with python scripts/fit.py --model vqvae"
        ) from None
    if not isinstance(model, VQVAE):
        raise ValueError(
            f"--model.vqvae_checkpoint: {path} holds a {type(model).__name__}, not a VQ-VAE; "
            "pass the last.ckpt of python scripts/fit.py --model vqvae"
        )
    if image_shape is not None and tuple(model.hparams.image_shape) != tuple(image_shape):
        raise ValueError(
            f"--model.vqvae_checkpoint: {path} was trained on images of shape {tuple(model.hparams.image_shape)}, "
            f"these data have {tuple(image_shape)}; train the VQ-VAE on the same --data"
        )
    return model


def in_fresh_context(build, *args):
    """build(*args) outside this model's instantiation: LightningCLI (and a checkpoint it wrote, when loaded)
    instantiates a model with its hyper-parameters in a context variable, which every save_hyperparameters()
    under the model's __init__ would take for its own, the VQ-VAE's included; in a fresh context it records its
    own."""
    return contextvars.Context().run(build, *args)


def vqvae_arguments(model: VQVAE) -> dict:
    """The VQ-VAE's own init arguments, as its hyper-parameters hold them (without what a loader adds), as plain
    JSON values: a checkpoint loads with weights_only=True, which refuses the parser's int subclasses."""
    names = [name for name in inspect.signature(VQVAE.__init__).parameters if name != "self"]
    return json.loads(json.dumps({name: model.hparams[name] for name in names if name in model.hparams}))


def on_latents(factory: DenoiserFactory, channels: int) -> DenoiserFactory:
    """The denoiser factory called with the latents' channels, whatever channels it is asked for (DDPM builds
    its network for the image channels)."""
    return lambda _image_channels, num_classes: factory(channels, num_classes)


class LatentDiffusion(DDPM):
    """DDPM over the pre-quantisation latents z_e(x) of a frozen VQ-VAE (with a VQ-regularised autoencoder, Rombach
    et al. diffuse before the quantisation layer and count it as part of the decoder), scaled by one factor to
    unit variance: the factor 1 / std(z_e) is measured over the training split at the start of fit (Rombach et
    al. estimate it on the first batch) and kept in the checkpoint. Sampling runs DDPM's samplers on latent noise
    and decodes with the VQ-VAE, quantising first unless `quantize_samples` is off; `encode`/`decode` are DDIM
    inversion and regeneration of the latent, so the Samples and Encodes contracts hold as for DDPM.

    The VQ-VAE is held outside the module tree (not a registered submodule): nothing that walks this model's
    parameters or buffers can change it, neither the optimiser, nor Lightning's train mode, nor
    EMAWeightAveraging (whose decay * w + (1 - decay) * w rounds a constant weight off by an ulp, and whose copy
    of the model would carry it back). It follows the model to its device and dtype, stays in eval mode with no
    gradient, and its weights travel in this model's checkpoint beside the state_dict, with its hyper-parameters
    in this model's, so a trained LDM loads without the VQ-VAE's file.
    """

    def __init__(
        self,
        vqvae_checkpoint: str | None = None,
        denoiser: DenoiserFactory | None = None,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
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
        quantize_samples: bool = True,
        scale_images: PositiveInt | None = None,
        inversion_steps: PositiveInt = 100,
        inversion_refine: int = 1,
        compile: bool = False,
        vqvae_hparams: dict | None = None,
    ) -> None:
        """
        Args:
            vqvae_checkpoint: a VQ-VAE checkpoint written by scripts/fit.py --model vqvae, trained on the same data.
            denoiser: the network on the latent grid, called as denoiser(latent channels, num_classes or None);
                None picks UNet with its defaults.
            image_shape: (C, H, W) of the images; set from the DataModule by scripts/fit.py.
            num_classes: classes of the data; set from the DataModule (used when class_conditional).
            class_conditional: condition the denoiser on the label (sampling then takes labels `y`).
            schedule: "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal 2021).
            timesteps: T.
            prediction: the network's target: "eps" or "v".
            lr: Adam learning rate.
            warmup_steps: linear learning-rate warm-up, then constant.
            sampler: the default of `sample`: "ddpm" (ancestral, T steps) or "ddim".
            sample_steps: default number of DDIM steps.
            eta: default DDIM stochasticity.
            quantize_samples: replace each sampled latent vector by its nearest code before decoding.
            scale_images: measure the latent scale on the first this many training images; None for all of them.
            inversion_steps: DDIM steps of `encode` and `decode`.
            inversion_refine: fixed-point iterations per inversion step (see DDPM).
            compile: compile the denoiser in place (torch.compile).
            vqvae_hparams: the VQ-VAE's hyper-parameters, read from vqvae_checkpoint when not given; leave it
                unset (a trained LDM's checkpoint carries them, with the VQ-VAE's weights).
        """
        if vqvae_hparams is None:
            if not vqvae_checkpoint:
                raise ValueError(MISSING_VQVAE)
            autoencoder = in_fresh_context(load_vqvae, vqvae_checkpoint, image_shape)
            vqvae_hparams = vqvae_arguments(autoencoder)
        else:  # loading a trained LDM: its checkpoint brings the weights (on_load_checkpoint)
            autoencoder = in_fresh_context(lambda: VQVAE(**vqvae_hparams))
        channels = autoencoder.latent_shape[0]
        super().__init__(
            on_latents(denoiser or UNet, channels),
            image_shape,
            None,
            num_classes,
            class_conditional,
            schedule,
            timesteps,
            prediction,
            lr,
            warmup_steps,
            sampler,
            sample_steps,
            eta,
            False,  # no clip of the predicted x_0 to [-1, 1]: latents are not pixels
            inversion_steps,
            inversion_refine,
            compile,
        )
        # Recorded with the arguments (in the checkpoint): the VQ-VAE's, so that a trained LDM loads without its
        # file, and DDPM's clip flag, which its sampler reads.
        self.hparams.update(vqvae_hparams=vqvae_hparams, clip_denoised=False)
        autoencoder.eval().requires_grad_(False)
        object.__setattr__(self, "autoencoder", autoencoder)  # outside the module tree: see the class docstring
        self.latent_scale: float | None = None

    # The latents have no pixels for an inpainting mask to keep: this model does not offer the Inpaints contract.
    inpaint = None

    # --- the frozen autoencoder ---------------------------------------------------------------------------------
    def _apply(self, fn, recurse: bool = True):
        """nn.Module's hook behind .to(), .cuda(), .double(): the autoencoder follows the model."""
        autoencoder = self.__dict__.get("autoencoder")
        if autoencoder is not None:
            autoencoder._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {"state_dict": self.autoencoder.state_dict(), "latent_scale": self.latent_scale}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            raise CheckpointError(
                "the checkpoint holds no VQ-VAE weights; was it written by scripts/fit.py --model ldm?"
            )
        self.autoencoder.load_state_dict(saved["state_dict"])
        self.latent_scale = saved["latent_scale"]

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen VQ-VAE's pre-quantisation latents of images in [0, 1], in float32 whatever the autocast (the
        scale was measured on float32 latents)."""
        with torch.autocast(x.device.type, enabled=False):
            return self.autoencoder.encode(x.float())

    def on_fit_start(self) -> None:
        """Measure the latent scale over the training split, unless a resumed checkpoint brought it."""
        if self.latent_scale is not None:
            return
        datamodule = self.trainer.datamodule
        if not callable(getattr(datamodule, "batch", None)):
            raise ValueError("ldm measures its latent scale on the training images: fit it with an image DataModule")
        wanted = len(datamodule.dataset("train"))
        if self.hparams.scale_images is not None:
            wanted = min(wanted, self.hparams.scale_images)
        images = datamodule.batch("train", n=wanted)[0]
        self.latent_scale = latent_scale(
            torch.cat([self.latents(chunk.to(self.device)) for chunk in images.split(500)])
        )

    # --- the model's range: DDPM maps images to what it diffuses, and back, here only ---------------------------
    def scale(self) -> float:
        if self.latent_scale is None:
            raise ValueError(
                "this LatentDiffusion has no latent scale yet: it is measured when fit starts; train it first"
            )
        return self.latent_scale

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return self.latents(x) * self.scale()

    def from_model(self, z: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            return self.autoencoder.decode(z.float() / self.scale(), quantize=self.hparams.quantize_samples)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((n, *self.autoencoder.latent_shape), device=self.device, generator=generator)


def latent_scale(latents: torch.Tensor) -> float:
    """1 / std of all the latents' elements (in float64: a sum over millions of them), so that the scaled latents
    have variance 1."""
    return float(1 / latents.double().std(correction=0))
