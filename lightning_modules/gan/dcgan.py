"""DCGAN (Radford et al. 2016): a generator of transposed convolutions with batch norm and ReLU, a discriminator of
strided convolutions with LeakyReLU 0.2 (and batch norm, or spectral norm, Miyato et al. 2018), trained with two
Adam optimisers (lr 2e-4, beta1 0.5, Sec. 4) by Lightning's manual optimisation: a discriminator step, then a
generator step, every batch. Samples come from an exponential moving average of the generator (Yazici et al. 2019)."""

import copy
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from lightning_modules.gan.evaluation import class_shares_and_fid
from lightning_modules.gan.losses import ADVERSARIAL_LOSSES


def upsamplings(side: int) -> tuple[int, int]:
    """(halvings, base side): halve the side while it is even and above 4 (28 -> 7 in 2, 32 -> 4 in 3)."""
    halvings = 0
    while side % 2 == 0 and side > 4:
        side, halvings = side // 2, halvings + 1
    return halvings, side


class Generator(nn.Module):
    """z (B, latent_dim) -> images in [-1, 1] (tanh): z projected to (width * 2^(k-1), s, s), then k stride-2
    transposed convolutions doubling the side, each but the last with batch norm and ReLU (Radford et al., Fig. 1)."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int, width: int) -> None:
        super().__init__()
        channels, side, _ = image_shape
        halvings, base = upsamplings(side)
        widths = [width * 2 ** (halvings - 1 - i) for i in range(halvings)] + [channels]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], base, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        ]  # fmt: skip
        for index, (c_in, c_out) in enumerate(zip(widths, widths[1:], strict=False)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=index == halvings - 1))
            layers += [nn.BatchNorm2d(c_out), nn.ReLU()] if index < halvings - 1 else [nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class MinibatchStd(nn.Module):
    """The minibatch standard deviation layer (Karras et al. 2018, Sec. 3): the standard deviation of every feature
    over groups of `group_size` images, averaged to one number per group and appended as a constant feature map.
    A generator that draws too few kinds of images gives groups with a small spread, which the discriminator can
    then see and punish; without it each image is judged alone and partial mode collapse goes unseen."""

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = max(d for d in range(1, min(self.group_size, b) + 1) if b % d == 0)  # a group size that divides b
        # Image i joins group i % (b / g): (g, b / g, ...) puts the members of one group along dim 0.
        spread = x.float().view(g, b // g, c, h, w).var(0, unbiased=False).add(1e-8).sqrt().mean((1, 2, 3))
        feature = spread.repeat(g).view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)
        return torch.cat([x, feature], 1)


class Discriminator(nn.Module):
    """images in [-1, 1] -> one logit each: k stride-2 convolutions halving the side with LeakyReLU 0.2 (batch norm
    after all but the first, or spectral norm on every layer instead), then (with `minibatch_std`) the minibatch
    standard deviation as one more channel, then a convolution over the base side."""

    def __init__(
        self, image_shape: tuple[int, int, int], width: int, spectral_norm: bool, minibatch_std: bool = False
    ) -> None:
        super().__init__()
        channels, side, _ = image_shape
        halvings, base = upsamplings(side)
        widths = [channels] + [width * 2**i for i in range(halvings)]
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda module: module)
        layers: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip(widths, widths[1:], strict=False)):
            layers.append(wrap(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)))
            if index > 0 and not spectral_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2))
        if minibatch_std:
            layers.append(MinibatchStd())
        layers.append(wrap(nn.Conv2d(widths[-1] + minibatch_std, 1, base)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class DCGAN(L.LightningModule):
    """Methods: `sample(n)`, `decode(z)` (the averaged generator), `encode(x)` (the latent whose image is closest
    to x, found by gradient descent), `evaluate(datamodule, fid_classifier=...)`."""

    benchmark_metric = "test/d_loss"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        latent_dim: PositiveInt = 100,
        generator_width: PositiveInt = 64,
        discriminator_width: PositiveInt = 64,
        loss: Literal["non_saturating", "hinge"] = "non_saturating",
        spectral_norm: bool = False,
        minibatch_std: bool = False,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        ema_decay: float = 0.999,
        inversion_steps: PositiveInt = 200,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data (square; 28 x 28 and 32 x 32 among others); set from the DataModule.
            latent_dim: dimension of z ~ N(0, I) (100 in the paper).
            generator_width: channels of the generator's last hidden layer (they double towards z).
            discriminator_width: channels of the discriminator's first layer (they double with depth).
            loss: "non_saturating" (Goodfellow et al. 2014) or "hinge" (Lim & Ye 2017).
            spectral_norm: spectral normalisation of every discriminator layer instead of its batch norm.
            minibatch_std: the discriminator's last layer also sees the spread of the images in groups of 4 (Karras
                et al. 2018), against partial mode collapse.
            lr: both Adam learning rates (2e-4 in the paper).
            betas: both Adams' betas (beta1 0.5 in the paper).
            ema_decay: decay of the generator's moving average used for sampling (0: the generator itself).
            inversion_steps: Adam steps of `encode`'s search for the latent of an image.
            compile: run the generator and the discriminator (not the averaged generator, which only samples)
                through torch.compile, in place: the state_dict keys stay the plain ones, so a checkpoint loads with
                or without the flag.
        """
        super().__init__()
        if image_shape is None or image_shape[1] != image_shape[2] or image_shape[1] % 4:
            raise ValueError(
                f"gan needs square images with a side divisible by 4 (e.g. --data mnist or cifar10), got {image_shape}"
            )
        if not 0 <= ema_decay < 1:
            raise ValueError(f"--model.ema_decay must be in [0, 1), got {ema_decay}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        shape = tuple(image_shape)
        self.generator = Generator(shape, latent_dim, generator_width)
        self.discriminator = Discriminator(shape, discriminator_width, spectral_norm, minibatch_std)
        # Lightning's EMAWeightAveraging averages the whole LightningModule and swaps the average in at the end of
        # training: the discriminator would be averaged and replaced too, and a resumed game would go on against
        # another adversary. So the generator alone is averaged here.
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        # Whether the averaged generator's batch norm statistics are its own (see refresh_ema_statistics); not
        # saved, so a loaded model measures them again (from a fixed seed: the same figures) before sampling.
        self.register_buffer("ema_statistics_fresh", torch.tensor(False), persistent=False)
        self.discriminator_loss, self.generator_loss = ADVERSARIAL_LOSSES[loss]
        if compile:  # after the copy above: the average is a plain module
            self.generator.compile()
            self.discriminator.compile()

    # --- the model's range, its latent and its sampler ------------------------------------------------------
    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1

    def from_model(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(n, self.hparams.latent_dim, device=self.device, generator=generator)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] of the averaged generator (in eval mode: its batch norm's running statistics, measured
        on its own activations)."""
        return self.from_model(self.averaged_generator()(z))

    def averaged_generator(self) -> nn.Module:
        """The generator's moving average in eval mode, its batch norm statistics measured first if stale."""
        if not self.ema_statistics_fresh:
            self.refresh_ema_statistics()
        return self.generator_ema.eval()

    @torch.no_grad()
    def refresh_ema_statistics(self, batches: int = 10, batch_size: int = 256) -> None:
        """Batch norm's running statistics of the averaged generator, measured anew on `batches` batches of its own
        activations from fixed latents (the "standing statistics" of Brock et al. 2019). The averaged weights
        are not the weights the training batches' statistics came from: with the current generator's statistics
        the MNIST config's samples had a classifier FID of 14.47 and class shares of 5.6-15.4%; with their own,
        12.47 and 6.0-14.3% (docs/results.md)."""
        norms = [m for m in self.generator_ema.modules() if isinstance(m, nn.BatchNorm2d)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average over the batches, not an exponential one
        seed = torch.Generator(device=self.device).manual_seed(0)
        self.generator_ema.train()
        try:
            for _ in range(batches):
                self.generator_ema(self.latents(batch_size, seed))
        finally:
            for norm, momentum in zip(norms, momenta, strict=True):
                norm.momentum = momentum
            self.generator_ema.eval()
        self.ema_statistics_fresh.fill_(True)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` images in [0, 1] from z ~ N(0, I)."""
        return self.decode(self.latents(n, generator))

    def encode(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """The latent z whose image decode(z) is closest to x in squared error, by Adam from a fixed draw of N(0, I)
        (GAN inversion, Zhu et al. 2016, Sec. 3.1; z = 0 would be a stationary point of a ReLU generator without
        biases); a GAN has no encoder, and this lets the latent walks start at test images."""
        target = self.to_model(x)
        start = torch.Generator(device=x.device).manual_seed(0)
        z = self.latents(len(x), start).to(x.device).requires_grad_(True)
        optimizer = torch.optim.Adam([z], lr=0.05)
        network = self.averaged_generator()
        with torch.enable_grad():
            for _ in range(steps or self.hparams.inversion_steps):
                loss = (network(z) - target).pow(2).flatten(1).sum(1).mean()
                (gradient,) = torch.autograd.grad(loss, z)
                z.grad = gradient
                optimizer.step()
        return z.detach()

    # --- training ---------------------------------------------------------------------------------------
    def discriminator_step(self, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """One discriminator update on real images (model range) and as many fresh, detached fakes."""
        optimizer = self.optimizers()[0]
        fake = self.generator(self.latents(len(real))).detach()
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        d_loss = self.discriminator_loss(real_logits.float(), fake_logits.float())
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        optimizer.step()
        # The discriminator's accuracy: a positive logit says "real" (both losses' decision boundary is 0).
        return {
            "d_loss": d_loss.detach(),
            "d_acc_real": (real_logits > 0).float().mean(),
            "d_acc_fake": (fake_logits < 0).float().mean(),
        }

    def generator_step(self, n: int) -> torch.Tensor:
        """One generator update; the discriminator's parameters are switched off for it (toggle_optimizer), so no
        gradient reaches them."""
        optimizer = self.optimizers()[1]
        self.toggle_optimizer(optimizer)
        try:
            g_loss = self.generator_loss(self.discriminator(self.generator(self.latents(n))).float())
            optimizer.zero_grad(set_to_none=True)
            self.manual_backward(g_loss)
            optimizer.step()
        finally:
            self.untoggle_optimizer(optimizer)
        self.update_ema()
        return g_loss.detach()

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = self.hparams.ema_decay
        for average, current in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            average.lerp_(current, 1 - decay)
        self.ema_statistics_fresh.fill_(False)  # batch norm's statistics are measured again before sampling

    def training_step(self, batch, batch_idx: int) -> None:
        real = self.to_model(batch[0])
        figures = self.discriminator_step(real)
        figures["g_loss"] = self.generator_step(len(real))
        self.log_dict({f"train/{k}": v for k, v in figures.items()}, prog_bar=True)

    def held_out_figures(self, batch, batch_idx: int, stage: str) -> None:
        """The discriminator's losses and accuracies on held-out images and as many samples from fixed noise."""
        real = self.to_model(batch[0])
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        fake = self.to_model(self.sample(len(real), generator))
        real_logits, fake_logits = self.discriminator(real).float(), self.discriminator(fake).float()
        figures = {
            "d_loss": self.discriminator_loss(real_logits, fake_logits),
            "g_loss": self.generator_loss(fake_logits),
            "d_acc_real": (real_logits > 0).float().mean(),
            "d_acc_fake": (fake_logits < 0).float().mean(),
        }
        self.log_dict({f"{stage}/{k}": v for k, v in figures.items()}, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.held_out_figures(batch, batch_idx, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self.held_out_figures(batch, batch_idx, "test")

    def configure_optimizers(self):
        h = self.hparams
        return (
            torch.optim.Adam(self.discriminator.parameters(), lr=h.lr, betas=tuple(h.betas)),
            torch.optim.Adam(self.generator.parameters(), lr=h.lr, betas=tuple(h.betas)),
        )

    # --- evaluation ---------------------------------------------------------------------------------------
    def evaluate(
        self,
        datamodule: L.LightningDataModule | None,
        fid_classifier: str | None = None,
        samples: int = 1000,
        seed: int = 0,
    ) -> dict[str, float]:
        """With a classifier checkpoint (`--fid_classifier CKPT`, from scripts/fit.py --model lenet5): the
        classifier FID of `samples` samples against the test split, and the share of the samples the classifier
        puts in each class, its smallest and largest (a mode-collapsed generator leaves classes near 0)."""
        return class_shares_and_fid(self, datamodule, fid_classifier, samples, seed)
