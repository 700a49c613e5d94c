"""An autoencoder whose code is quantised to integers: by the differentiable floor (blocks/softfloor.py), by
straight-through rounding, or not at all, with the same networks, so that the three compare."""

from collections.abc import Sequence
from typing import Literal

import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from lightning_modules.autoencoders.autoencoder import Autoencoder
from lightning_modules.blocks.softfloor import ContinuousFloor, SoftFloor, StraightThroughRound

QUANTIZERS = ("softfloor", "round_ste", "none")


def make_quantizer(quantizer: str, sharpness: float, epsilon: float) -> nn.Module:
    """The quantisation layer by name."""
    if quantizer == "softfloor":
        return SoftFloor(sharpness, epsilon)
    if quantizer == "round_ste":
        return StraightThroughRound()
    if quantizer == "none":
        return ContinuousFloor()
    raise ValueError(f"--model.quantizer must be one of {', '.join(QUANTIZERS)}, got {quantizer!r}")


class QuantizedAutoencoder(Autoencoder):
    """Autoencoder with an integer code: the encoder's outputs squashed into (0, L) by L sigmoid(.) and
    quantised to {0, ..., L-1}, log2(L) bits per code dimension.

    `quantizer: softfloor` trains through softfloor(u) (n - epsilon at the integers, sigmoid steps between) and
    tests with floor(u); `round_ste` rounds u - 1/2 (the same integers) forward and passes the gradient through
    unchanged; `none` hands the decoder u - 1/2 itself, the unquantised reference. `encode(x)` is the code the
    decoder sees: integers in evaluation for both quantisers.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        network: Literal["mlp", "conv"] = "mlp",
        hidden_dims: Sequence[int] = (256, 128),
        conv_channels: Sequence[int] = (32, 64),
        latent_dim: PositiveInt = 16,
        loss: Literal["mse", "bce"] = "mse",
        activation: str = "relu",
        lr: float = 1e-3,
        conv_impl: Literal["torch", "scratch"] = "torch",
        quantizer: Literal["softfloor", "round_ste", "none"] = "softfloor",
        levels: int = 8,
        sharpness: float = 20.0,
        epsilon: float = 0.01,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape, network, hidden_dims, conv_channels, latent_dim, loss, activation, lr, conv_impl, compile:
                as for the plain autoencoder (lightning_modules/autoencoders/autoencoder.py).
            quantizer: "softfloor", "round_ste" or "none" (see the class docstring).
            levels: L, the integers each code dimension takes (>= 2).
            sharpness: softfloor's k, the slope of its sigmoid steps.
            epsilon: softfloor(n) = n - epsilon at the integers.
        """
        if levels < 2:
            raise ValueError(f"--model.levels must be >= 2 (the integers a code dimension takes), got {levels}")
        quantize = make_quantizer(quantizer, sharpness, epsilon)
        super().__init__(image_shape, network, hidden_dims, conv_channels, latent_dim, loss, activation, lr, conv_impl,
                         compile)  # fmt: skip
        self.save_hyperparameters()
        self.quantize = quantize

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The quantised code (B, latent_dim): integers in {0, ..., L-1} in evaluation."""
        return self.quantize(self.hparams.levels * torch.sigmoid(self.encoder(x)))
