"""Variational autoencoder (Kingma & Welling 2014): a Gaussian encoder q(z|x) with the reparameterisation
trick, a Bernoulli or Gaussian decoder p(x|z), trained on the negative evidence lower bound (eq. 10) and
reported per image in nats; tested also with the importance-weighted bound of Burda et al. (2015)."""

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torch import nn
from torchmetrics import MeanMetric

from lightning_modules.blocks.autoencoder_nets import make_decoder, make_encoder
from lightning_modules.optim import per_step
from lightning_modules.step_logging import writes_step_metrics

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, in closed form (Kingma & Welling 2014, appendix B,
    the KL term of eq. 10)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) (Kingma & Welling 2014, sec. 2.4): a sample of q(z|x) that
    gradients flow through to mu and logvar."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per image (summed over the last three dims, C, H, W) for a Bernoulli decoder; x in [0, 1]
    (grey levels act as soft targets). softplus(l) - x l is the binary cross-entropy with logits l, written so
    that x broadcasts over leading sample dimensions without a copy."""
    return (F.softplus(logits) - logits * x).sum(dim=(-3, -2, -1))


def gaussian_nll(mean: torch.Tensor, log_sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log N(x; mean, sigma^2 I) per image (summed over C, H, W): a density over pixel values, so not comparable with the
    Bernoulli decoder's nats."""
    per_pixel = 0.5 * ((x - mean) * torch.exp(-log_sigma)).pow(2) + log_sigma + 0.5 * LOG_2PI
    return per_pixel.sum(dim=(-3, -2, -1))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(dim=-1)


def diagonal_normal_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(dim=-1)


class VAE(L.LightningModule):
    """VAE with an MLP (784-400-20, the paper's and pytorch/examples') or a convolutional encoder/decoder.

    Conventions shared by the models with `encode`/`decode` (see callbacks/latent_walk.py): `encode(x)` returns
    the latent code used for walks and plots, here the posterior mean; `decode(z)` returns images in [0, 1].
    """

    benchmark_metric = "test/neg_elbo_nats"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        network: Literal["mlp", "conv"] = "mlp",
        hidden_dim: PositiveInt = 400,
        latent_dim: PositiveInt = 20,
        conv_channels: Sequence[int] = (32, 64),
        decoder: Literal["bernoulli", "gaussian"] = "bernoulli",
        activation: str = "relu",
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iwae_samples: int = 1000,
        iwae_test_images: int | None = None,
        lr: float = 1e-3,
        cosine_decay: bool = False,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            network: "mlp" (one hidden layer of `hidden_dim` each side) or "conv" (stride-2 convolutions
                of `conv_channels`, transposed convolutions back).
            hidden_dim: width of the MLP encoder's and decoder's hidden layer.
            latent_dim: dimension of z.
            conv_channels: channels of the conv encoder's stride-2 layers (the decoder mirrors them).
            decoder: "bernoulli" (pixel logits, binary cross-entropy) or "gaussian" (pixel means and one
                learned noise scale sigma, as in sigma-VAE, Rybkin et al. 2021).
            activation: the nonlinearity between layers: relu, silu, elu or tanh.
            beta: weight of the KL term in the training loss (beta-VAE, Higgins et al. 2017); the logged
                -ELBO always uses 1.
            kl_warmup_steps: the KL weight rises linearly from 0 to `beta` over this many optimiser steps
                (Sonderby et al. 2016); 0 for none.
            iwae_samples: k, the importance samples of the test estimate of -log p(x); 0 to skip it.
            iwae_test_images: estimate it on the first this many test images only (it costs k decoder passes
                per image); None for the whole test set.
            lr: Adam learning rate.
            cosine_decay: anneal the learning rate to 0 over the run with a cosine (Loshchilov & Hutter 2017);
                the end of training then averages out the gradient noise instead of carrying it.
            compile: run the encoder and the decoder through torch.compile, in place: the state_dict keys stay the
                plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if image_shape is None:
            raise ValueError("vae needs image data: pick an image DataModule, e.g. --data mnist")
        if decoder not in ("bernoulli", "gaussian"):
            raise ValueError(f"--model.decoder must be 'bernoulli' or 'gaussian', got {decoder!r}")
        if beta < 0 or kl_warmup_steps < 0 or iwae_samples < 0:
            raise ValueError("--model.beta, --model.kl_warmup_steps and --model.iwae_samples must be >= 0")
        if iwae_test_images is not None and iwae_test_images < 1:
            raise ValueError(f"--model.iwae_test_images must be >= 1 or null (all), got {iwae_test_images}")
        self.save_hyperparameters()
        hidden = [hidden_dim]
        # One linear layer gives both (mu, logvar) of q(z|x): the same parameters as two heads.
        self.encoder = make_encoder(network, image_shape, hidden, conv_channels, 2 * latent_dim, activation)
        self.decoder = make_decoder(network, latent_dim, hidden, conv_channels, image_shape, activation)
        if compile:
            self.encoder.compile()
            self.decoder.compile()
        if decoder == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(()))
        self.test_neg_elbo = MeanMetric()
        self.test_iwae_nll = MeanMetric()
        self._iwae_images_seen = 0

    # --- the documented model methods -------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x), each (B, latent_dim)."""
        # fp32 under bf16 autocast: the KL, the reparameterised sample and IWAE's log-densities are elementwise
        # sums that autocast would leave in bf16 (8 bits of mantissa: ~0.4% per term).
        mu, logvar = self.encoder(x).float().chunk(2, dim=1)
        return mu, logvar

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latent code of x used for walks and plots: the posterior mean E_q[z|x]."""
        return self.posterior(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image E[x|z], in [0, 1]."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.hparams.decoder == "bernoulli" else out.clamp(0.0, 1.0)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """`n` images decoded from z ~ p(z) = N(0, I) (decoder means)."""
        return self.decode(torch.randn(n, self.hparams.latent_dim, device=self.device))

    # --- the loss --------------------------------------------------------------------------
    def reconstruction_nll(self, decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image, from the decoder's raw output (summed over pixels in fp32)."""
        decoded = decoded.float()
        if self.hparams.decoder == "bernoulli":
            return bernoulli_nll(decoded, x)
        return gaussian_nll(decoded, self.log_sigma, x)

    def elbo_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: the reconstruction term E_q[-log p(x|z)], one reparameterised sample, and the
        closed-form KL(q(z|x) || p(z)); their sum is -ELBO (Kingma & Welling 2014, eq. 10)."""
        mu, logvar = self.posterior(x)
        return self.reconstruction_nll(self.decoder(reparameterise(mu, logvar)), x), gaussian_kl(mu, logvar)

    def neg_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """-ELBO per image in nats (eq. 10 with the KL weight 1)."""
        reconstruction, kl = self.elbo_terms(x)
        return reconstruction + kl

    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over the warm-up steps (the warm-up of Sonderby et al. 2016)."""
        warmup = self.hparams.kl_warmup_steps
        return self.hparams.beta * (min(1.0, self.global_step / warmup) if warmup else 1.0)

    @torch.no_grad()
    def iwae_nll(self, x: torch.Tensor, k: int, chunk_rows: int = 32768) -> torch.Tensor:
        """-log p(x) per image estimated with k importance samples from q(z|x) (Burda et al. 2015, eq. 8):
        -log (1/k) sum_i p(x, z_i) / q(z_i | x). It is an upper bound on -log p(x) that tightens as k grows,
        and equals the ELBO's expectation at k = 1. Samples are drawn in chunks to bound memory."""
        mu, logvar = self.posterior(x)
        per_chunk = max(1, chunk_rows // len(x))
        log_weights = []
        for start in range(0, k, per_chunk):
            n = min(per_chunk, k - start)
            z = mu + torch.randn(n, *mu.shape, device=mu.device, dtype=mu.dtype) * (0.5 * logvar).exp()  # (n, B, d)
            decoded = self.decoder(z.flatten(0, 1)).unflatten(0, (n, len(x)))
            log_likelihood = -self.reconstruction_nll(decoded, x)  # x broadcasts over the n samples
            log_weights.append(log_likelihood + standard_normal_log_prob(z) - diagonal_normal_log_prob(z, mu, logvar))
        return math.log(k) - torch.logsumexp(torch.cat(log_weights), dim=0)

    # --- Lightning hooks -------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        reconstruction, kl = self.elbo_terms(batch[0])
        loss = (reconstruction + self.kl_weight() * kl).mean()
        # A step of this model takes a few milliseconds, and a self.log call a good part of one: log only
        # at the steps the logger writes (the progress bar's loss then changes every log_every_n_steps).
        if writes_step_metrics(self.trainer):
            self.log("train/loss", loss, prog_bar=True)
            self.log_dict({"train/neg_elbo_nats": (reconstruction + kl).mean(), "train/kl_nats": kl.mean()})
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        self.log("val/neg_elbo_nats", self.neg_elbo(x).mean(), prog_bar=True, sync_dist=True, batch_size=len(x))

    def on_test_epoch_start(self) -> None:
        self._iwae_images_seen = 0

    def test_step(self, batch, batch_idx: int) -> None:
        x = batch[0]
        self.test_neg_elbo.update(self.neg_elbo(x))
        self.log("test/neg_elbo_nats", self.test_neg_elbo)
        limit, k = self.hparams.iwae_test_images, self.hparams.iwae_samples
        if k > 0 and (limit is None or self._iwae_images_seen < limit):
            x = x if limit is None else x[: limit - self._iwae_images_seen]
            self._iwae_images_seen += len(x)
            self.test_iwae_nll.update(self.iwae_nll(x, k))
            self.log("test/iwae_nll_nats", self.test_iwae_nll)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per image: the posterior q(z|x) (mean and log-variance), the reconstruction decoded from its mean and
        -ELBO in nats (one reparameterised sample, as the test figure)."""
        x = batch[0]
        mu, logvar = self.posterior(x)
        return {
            "latent": mu,
            "log_variance": logvar,
            "reconstruction": self.decode(mu),
            "neg_elbo_nats": self.neg_elbo(x),
        }

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        if not self.hparams.cosine_decay:
            return optimizer
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": per_step(schedule)}
