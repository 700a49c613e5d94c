"""Autoencoders: the plain one (`ae`, Hinton & Salakhutdinov 2006) and the denoising one (`dae`, Vincent et
al. 2008), which learns to reconstruct the clean image from a corrupted copy. Both use the shared MLP or
convolutional networks of blocks/autoencoder_nets.py."""

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torchmetrics import MeanSquaredError
from torchmetrics.image import PeakSignalNoiseRatio

from lightning_modules.blocks.autoencoder_nets import make_decoder, make_encoder


def reconstruction_loss(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean per-pixel reconstruction loss: squared error of the sigmoid output, or binary cross-entropy
    with x in [0, 1] as soft targets (the cross-entropy loss L_H of Vincent et al. 2008)."""
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(logits), x)
    return F.binary_cross_entropy_with_logits(logits, x)


def gaussian_noise(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x + sigma * eps, eps ~ N(0, I), clipped back to the valid pixel range [0, 1]."""
    return (x + sigma * torch.randn_like(x)).clamp(0.0, 1.0)


def salt_and_pepper(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each pixel, with probability `fraction`, set to 0 or 1 with equal odds (Vincent et al. 2010)."""
    hit = torch.rand_like(x) < fraction
    salt = (torch.rand_like(x) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def random_mask(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each pixel, with probability `fraction`, forced to 0: the masking noise of Vincent et al. 2008 (sec. 2.3),
    drawn independently per pixel."""
    return x * (torch.rand_like(x) >= fraction).to(x.dtype)


CORRUPTIONS = {"gaussian": gaussian_noise, "salt_and_pepper": salt_and_pepper, "mask": random_mask}


class Autoencoder(L.LightningModule):
    """Deterministic autoencoder: encoder -> code -> decoder -> sigmoid image, trained on reconstruction.

    The default is the MLP with the tiny bottleneck, 784-128-64-12-3 (ReLU, last encoder layer linear), whose
    3-d code can be plotted as it is; `network: conv` gives strided convolutions down and transposed ones up.
    `encode(x)` returns the code (B, latent_dim) and `decode(z)` images in [0, 1] (callbacks/latent_walk.py).
    """

    benchmark_metric = "test/mse"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        network: Literal["mlp", "conv"] = "mlp",
        hidden_dims: Sequence[int] = (128, 64, 12),
        conv_channels: Sequence[int] = (32, 64),
        latent_dim: PositiveInt = 3,
        loss: Literal["mse", "bce"] = "mse",
        activation: str = "relu",
        lr: float = 1e-3,
        conv_impl: Literal["torch", "scratch"] = "torch",
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            network: "mlp" or "conv".
            hidden_dims: the MLP encoder's hidden widths, input side first (the decoder mirrors them).
            conv_channels: channels of the conv encoder's stride-2 layers (the decoder mirrors them).
            latent_dim: size of the code.
            loss: "mse" (squared error of the sigmoid output) or "bce" (binary cross-entropy on the logits).
            activation: the nonlinearity between layers: relu, silu, elu or tanh.
            lr: Adam learning rate.
            conv_impl: the conv network's convolutions: "torch" (nn.Conv2d, nn.ConvTranspose2d) or "scratch"
                (the same layers written with unfold, fold and matrix products, blocks/conv_from_scratch.py).
            compile: run the encoder and the decoder through torch.compile, in place: the state_dict keys stay the
                plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if image_shape is None:
            raise ValueError(f"{type(self).__name__} needs image data: pick an image DataModule, e.g. --data mnist")
        if loss not in ("mse", "bce"):
            raise ValueError(f"--model.loss must be 'mse' or 'bce', got {loss!r}")
        self.save_hyperparameters()
        self.encoder = make_encoder(network, image_shape, hidden_dims, conv_channels, latent_dim, activation, conv_impl)
        self.decoder = make_decoder(network, latent_dim, hidden_dims, conv_channels, image_shape, activation, conv_impl)
        if compile:
            self.encoder.compile()
            self.decoder.compile()
        self.test_mse = MeanSquaredError()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code of x, (B, latent_dim)."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from codes."""
        return torch.sigmoid(self.decoder(z))

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees in training: the image itself (the denoising model corrupts it)."""
        return x

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return reconstruction_loss(self.decoder(self.encode(self.model_input(x))), x, self.hparams.loss)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        self.log("val/loss", self.loss(x), prog_bar=True, sync_dist=True, batch_size=len(x))

    def test_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        self.test_mse.update(self.decode(self.encode(x)), x)
        self.log("test/mse", self.test_mse)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per image: its code and its reconstruction."""
        latent = self.encode(batch[0])
        return {"latent": latent, "reconstruction": self.decode(latent)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class DenoisingAutoencoder(Autoencoder):
    """Denoising autoencoder (Vincent et al. 2008): the same networks, trained to reconstruct the clean image
    from a corrupted copy. The test reports PSNR of the reconstructions of corrupted test images against the
    clean ones, beside the PSNR of the corrupted inputs themselves (the identity baseline).

    `corrupt(x)` is a documented method: callbacks/reconstruction_grid.py shows its output beside the inputs.
    """

    benchmark_metric = "test/psnr_db"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        network: Literal["mlp", "conv"] = "conv",
        hidden_dims: Sequence[int] = (128, 64, 12),
        conv_channels: Sequence[int] = (32, 64),
        latent_dim: PositiveInt = 32,
        loss: Literal["mse", "bce"] = "mse",
        corruption: Literal["gaussian", "salt_and_pepper", "mask"] = "gaussian",
        noise_level: float = 0.5,
        activation: str = "relu",
        lr: float = 1e-3,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            network: "mlp" or "conv".
            hidden_dims: the MLP encoder's hidden widths, input side first (the decoder mirrors them).
            conv_channels: channels of the conv encoder's stride-2 layers (the decoder mirrors them).
            latent_dim: size of the code.
            loss: "mse" or "bce", as for the plain autoencoder.
            corruption: "gaussian" (additive noise of std `noise_level`, clipped to [0, 1]), "salt_and_pepper"
                (a `noise_level` fraction of pixels set to 0 or 1) or "mask" (a `noise_level` fraction set to 0).
            noise_level: sigma of the Gaussian noise, or the fraction of pixels hit.
            activation: the nonlinearity between layers: relu, silu, elu or tanh.
            lr: Adam learning rate.
            compile: as for the plain autoencoder.
        """
        if corruption not in CORRUPTIONS:
            raise ValueError(f"--model.corruption must be one of {', '.join(CORRUPTIONS)}, got {corruption!r}")
        if noise_level < 0 or (corruption != "gaussian" and noise_level > 1):
            raise ValueError(f"--model.noise_level must be >= 0 (and <= 1 for {corruption}), got {noise_level}")
        super().__init__(image_shape, network, hidden_dims, conv_channels, latent_dim, loss, activation, lr,
                         compile=compile)  # fmt: skip
        self.save_hyperparameters()
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.test_noisy_psnr = PeakSignalNoiseRatio(data_range=1.0)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """A corrupted copy of x, freshly drawn at each call."""
        return CORRUPTIONS[self.hparams.corruption](x, self.hparams.noise_level)

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        return self.corrupt(x)

    def test_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        noisy = self.corrupt(x)
        denoised = self.decode(self.encode(noisy))
        # torchmetrics' PSNR of the whole set's mean squared error, 10 log10(1 / MSE), in dB.
        self.test_psnr.update(denoised, x)
        self.test_noisy_psnr.update(noisy, x)
        self.test_mse.update(denoised, x)
        self.log("test/psnr_db", self.test_psnr)
        self.log("test/noisy_psnr_db", self.test_noisy_psnr)
        self.log("test/mse", self.test_mse)

    def on_test_epoch_end(self) -> None:
        # The target: how many dB the model adds over handing back the corrupted input unchanged.
        self.log("test/psnr_gain_db", self.test_psnr.compute() - self.test_noisy_psnr.compute())
