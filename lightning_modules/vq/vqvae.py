"""VQ-VAE (van den Oord et al. 2017): a convolutional encoder to a grid of vectors, each replaced by its nearest
code of a learned codebook (lightning_modules/vq/quantizer.py), and a decoder from the quantised grid, trained on
the reconstruction error plus the codebook and commitment terms of eq. 3."""

from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torchmetrics import MeanSquaredError, R2Score

from lightning_modules.autoencoders.autoencoder import reconstruction_loss
from lightning_modules.blocks.autoencoder_nets import ConvDecoder, ConvEncoder, conv_sizes
from lightning_modules.step_logging import writes_step_metrics
from lightning_modules.vq.quantizer import CodeUsage, VectorQuantizer

STAGES = ("train", "val", "test")


class VQVAE(L.LightningModule):
    """VQ-VAE with the convolutional networks of blocks/autoencoder_nets.py: stride-2 convolutions down to a
    grid (7x7 for 28x28 images, 8x8 for 32x32) of `embedding_dim`-vectors, quantised to `num_codes` codes, and
    transposed convolutions back to pixel logits (a sigmoid gives the image; the reconstruction loss is the squared
    error of that image, the Gaussian log-likelihood of eq. 3 up to constants).

    The Encodes contract (callbacks/reconstruction_grid.py, latent_walk.py): `encode(x)` returns the
    pre-quantisation latent z_e(x), (B, D, h, w), and `decode(z)` quantises a latent and decodes it, so
    decode(encode(x)) is the VQ-VAE's reconstruction and a latent walk steps from code to code. The contract wants
    one tensor from `encode` (the walks interpolate it), so the code indices come from `code_indices(x)`.
    Each epoch logs the codebook's perplexity and the fraction of its codes in use (CodeUsage), and the test the
    squared error over the test images' variance, the figure of the Keras example (`test/mse_over_variance`).
    """

    benchmark_metric = "test/mse_over_variance"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        conv_channels: Sequence[int] = (32, 64),
        embedding_dim: PositiveInt = 16,
        num_codes: PositiveInt = 128,
        beta: float = 0.25,
        codebook_update: Literal["ema", "loss"] = "ema",
        decay: float = 0.99,
        dead_after: PositiveInt = 100,
        activation: str = "relu",
        lr: float = 1e-3,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            conv_channels: channels of the encoder's stride-2 convolutions (the decoder mirrors them); each halves
                the grid, so two give 7x7 for 28x28 images.
            embedding_dim: D, the size of the latent vectors and of the codes.
            num_codes: K, the codebook's size.
            beta: weight of the commitment loss (eq. 3; 0.25 in the paper).
            codebook_update: "ema" (exponential moving averages, appendix A.1) or "loss" (the codebook loss of eq. 3).
            decay: gamma of the moving averages (0.99 in the paper).
            dead_after: restart a code unused for this many training steps at an encoder output of the batch.
            activation: the nonlinearity between layers: relu, silu, elu or tanh.
            lr: Adam learning rate.
            compile: run the encoder and the decoder (not the codebook's search) through torch.compile, in place:
                the state_dict keys stay the plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if image_shape is None:
            raise ValueError("vqvae needs image data: pick an image DataModule, e.g. --data mnist")
        self.save_hyperparameters()
        self.encoder = ConvEncoder(image_shape, conv_channels, embedding_dim, activation, spatial=True)
        self.quantizer = VectorQuantizer(num_codes, embedding_dim, beta, codebook_update, decay, dead_after)
        self.decoder = ConvDecoder(embedding_dim, list(conv_channels)[::-1], image_shape, activation, spatial=True)
        if compile:
            self.encoder.compile()
            self.decoder.compile()
        self.train_usage, self.val_usage, self.test_usage = (CodeUsage(num_codes) for _ in STAGES)
        self.test_mse = MeanSquaredError()
        # 1 - R^2 over all test pixels is the squared error over the test images' pixel variance.
        self.test_r2 = R2Score()

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(D, h, w) of `encode`'s latents."""
        return (self.hparams.embedding_dim, *conv_sizes(self.hparams.image_shape, len(self.hparams.conv_channels))[-1])

    # --- the Encodes contract and the codes ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-quantisation latent z_e(x) of images in [0, 1]: (B, D, h, w)."""
        return self.encoder(x)

    def code_indices(self, x: torch.Tensor) -> torch.Tensor:
        """The index of each latent vector's nearest code: (B, h, w)."""
        return self.quantizer.nearest(self.encode(x))

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Images in [0, 1] from latents (B, D, h, w), each vector first replaced by its nearest code (without
        `quantize`, the decoder sees the latents as they are)."""
        return torch.sigmoid(self.decoder(self.quantizer.quantize(z) if quantize else z))

    # --- training ---------------------------------------------------------------------------------------------
    def losses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reconstruction loss, the quantiser's terms of eq. 3, and the latent and its code indices."""
        z = self.encoder(x)
        quantized = self.quantizer(z)
        reconstruction = reconstruction_loss(self.decoder(quantized.quantized), x, "mse")
        return reconstruction, quantized.loss, z, quantized.indices

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        reconstruction, vq_loss, z, indices = self.losses(batch[0])
        self.quantizer.update_codebook(z, indices)
        self.train_usage.update(indices)
        loss = reconstruction + vq_loss
        if writes_step_metrics(self.trainer):
            self.log("train/loss", loss, prog_bar=True)
            self.log_dict({"train/mse": reconstruction, "train/vq_loss": vq_loss})
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        reconstruction, vq_loss, _, indices = self.losses(x)
        self.val_usage.update(indices)
        self.log("val/loss", reconstruction + vq_loss, prog_bar=True, sync_dist=True, batch_size=len(x))
        self.log("val/mse", reconstruction, sync_dist=True, batch_size=len(x))

    def test_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        z = self.encode(x)
        self.test_usage.update(self.quantizer.nearest(z))
        reconstructions = self.decode(z)
        self.test_mse.update(reconstructions, x)
        self.test_r2.update(reconstructions.flatten(), x.flatten())
        self.log("test/mse", self.test_mse)

    def log_usage(self, stage: str) -> None:
        """The epoch's codebook perplexity and fraction of codes used, then a fresh count."""
        usage = getattr(self, f"{stage}_usage")
        self.log_dict({f"{stage}/{name}": value for name, value in usage.compute().items()})
        usage.reset()

    def on_train_epoch_end(self) -> None:
        self.log_usage("train")

    def on_validation_epoch_end(self) -> None:
        self.log_usage("val")

    def on_test_epoch_end(self) -> None:
        self.log_usage("test")
        self.log("test/mse_over_variance", 1 - self.test_r2.compute())
        self.test_r2.reset()

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per image: its latent, its code indices and its reconstruction."""
        latent = self.encode(batch[0])
        return {"latent": latent, "codes": self.quantizer.nearest(latent), "reconstruction": self.decode(latent)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
