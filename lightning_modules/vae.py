"""Variational autoencoder (Kingma & Welling 2014): Gaussian q(z|x), Bernoulli p(x|z), trained on the
negative evidence lower bound, reported per image in nats."""

import math

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, in closed form (Kingma & Welling 2014, appendix B,
    the KL term of eq. 10)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per sample for a Bernoulli decoder; x in [0, 1] (grey levels act as soft targets)."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(dim=1)


class VAE(L.LightningModule):
    """MLP VAE: pixels -> hidden -> (mu, log sigma^2) of a `latent_dim` Gaussian -> hidden -> pixel logits."""

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        hidden_dim: int = 400,
        latent_dim: int = 20,
        lr: float = 1e-3,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            hidden_dim: width of the encoder's and the decoder's hidden layer.
            latent_dim: dimension of z.
            lr: Adam learning rate.
        """
        super().__init__()
        if image_shape is None:
            raise ValueError("vae needs image data: pick an image DataModule, e.g. --data mnist")
        self.save_hyperparameters()
        pixels = math.prod(image_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden_dim), nn.ReLU())
        self.to_mu = nn.Linear(hidden_dim, latent_dim)
        self.to_logvar = nn.Linear(hidden_dim, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, pixels), nn.Unflatten(1, image_shape)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z|x)."""
        hidden = self.encoder(x)
        return self.to_mu(hidden), self.to_logvar(hidden)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean image E[x|z] in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, self.hparams.latent_dim, device=self.device))

    def neg_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """-ELBO per image: E_q[-log p(x|z)] (one reparameterised sample, eq. 10) + KL(q(z|x) || p(z))."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return bernoulli_nll(self.decoder(z), x) + gaussian_kl(mu, logvar)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.neg_elbo(batch[0]).mean()
        self.log("train/neg_elbo_nats", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/neg_elbo_nats", self.neg_elbo(batch[0]).mean(), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/neg_elbo_nats", self.neg_elbo(batch[0]).mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
