"""RealNVP (Dinh et al. 2017): a multi-scale flow of affine couplings (Sec. 3.6) on dequantised, logit-transformed
images, trained on their exact log-likelihood and reported in bits per dimension per test image (the mean of the
images' bits, each from its own log-determinant).

MNIST's 28 x 28 is modelled as it is, with two scales (28 -> 14 -> 7): padding to 32 x 32 would add constant pixels
whose (near-certain) likelihood lowers the bits per dimension of the real ones, and would no longer be comparable
with the published MNIST figures. The image side must be divisible by 2 ** scales."""

import math
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import nn
from torchmetrics import MeanMetric

from lightning_modules.flows.coupling import ActNorm, FlowSequence, Squeeze, coupling_stack, log_standard_normal, wide
from lightning_modules.flows.dequantization import (
    LEVELS,
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
    inverse_logit_transform,
    logit_transform,
    to_levels,
)
from lightning_modules.optim import WarmupDecay, warmup_decay

Norm = Literal["actnorm", "batchnorm", "none"]


class MultiScaleFlow(nn.Module):
    """The architecture of Sec. 3.6: at each of `scales` scales, checkerboard couplings, a squeeze, channel-wise
    couplings, then half of the channels are factored out (they go straight to the Gaussian); at the last scale,
    checkerboard couplings only. `forward` maps x (B, C, H, W) to z (B, C H W), the factored-out parts in order, and
    log|det dz/dx|; `inverse` maps z back."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        scales: int,
        stage_couplings: int,
        final_couplings: int,
        hidden: int,
        blocks: int,
        norm: Norm,
    ) -> None:
        super().__init__()
        channels, height, width = shape
        side = 2**scales
        if height % side or width % side:
            raise ValueError(
                f"--model.scales {scales}: the image side must be divisible by 2 ** scales = {side}, "
                f"got {height}x{width}; lower --model.scales"
            )
        self.stages = nn.ModuleList()
        self.factored_shapes: list[tuple[int, int, int]] = []
        for _ in range(scales):
            squeezed = (4 * channels, height // 2, width // 2)
            stage = coupling_stack((channels, height, width), "checkerboard", stage_couplings, hidden, blocks, norm)
            stage += [Squeeze(), *coupling_stack(squeezed, "channel", stage_couplings, hidden, blocks, norm)]
            self.stages.append(FlowSequence(stage))
            channels, height, width = 2 * channels, height // 2, width // 2
            self.factored_shapes.append((channels, height, width))
        self.final = FlowSequence(coupling_stack((channels, height, width), "checkerboard", final_couplings, hidden,
                                                 blocks, norm))  # fmt: skip
        self.final_shape = (channels, height, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        factored, total = [], x.new_zeros(len(x), dtype=wide(x).dtype)
        for stage in self.stages:
            x, log_det = stage(x)
            total = total + log_det
            x, out = x.chunk(2, dim=1)
            factored.append(out.flatten(1))
        x, log_det = self.final(x)
        return torch.cat([*factored, x.flatten(1)], dim=1), total + log_det

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        sizes = [math.prod(s) for s in (*self.factored_shapes, self.final_shape)]
        *parts, last = z.split(sizes, dim=1)
        x = self.final.inverse(last.reshape(len(z), *self.final_shape))
        for stage, part, shape in zip(reversed(self.stages), reversed(parts), reversed(self.factored_shapes),
                                      strict=True):  # fmt: skip
            x = stage.inverse(torch.cat([x, part.reshape(len(z), *shape)], dim=1))
        return x


class RealNVP(L.LightningModule):
    """Methods: `log_prob(x)` (nats per image), `sample(n, temperature)` (images in [0, 1])."""

    benchmark_metric = "test/bits_per_dim"

    # Resuming with --ckpt_path may lengthen the cool-down or switch compilation; the rest must match the run's.
    RESUMABLE_CHANGES = frozenset({"cooldown_fraction", "compile"})

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        scales: PositiveInt = 2,
        stage_couplings: PositiveInt = 6,
        final_couplings: PositiveInt = 6,
        hidden_channels: PositiveInt = 32,
        residual_blocks: NonNegativeInt = 1,
        norm: Norm = "actnorm",
        dequantization: Literal["uniform", "variational"] = "uniform",
        dequantization_couplings: PositiveInt = 4,
        alpha: float = 0.05,
        lr: float = 1e-3,
        warmup_steps: NonNegativeInt = 500,
        schedule: Literal["constant", "cosine"] = "constant",
        cooldown_fraction: float = 0.0,
        weight_decay: float = 0.0,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            scales: scales of the multi-scale architecture (Sec. 3.6); each halves the side.
            stage_couplings: checkerboard couplings before each squeeze, and as many channel-wise ones after it.
            final_couplings: checkerboard couplings at the last scale. The default 2 x (6 + 6) + 6 = 30 couplings.
            hidden_channels: width of the coupling networks.
            residual_blocks: residual blocks per coupling network.
            norm: the normalisation after each coupling: "actnorm" (Glow), "batchnorm" (Sec. 3.7) or "none".
            dequantization: "uniform" noise, or "variational" (Flow++: a conditional flow q(u|x) trained jointly).
            dequantization_couplings: couplings of the variational dequantiser's flow.
            alpha: the logit transform's margin (Sec. 4.1: 0.05 for MNIST-like data).
            lr: Adam learning rate.
            warmup_steps: linear learning-rate warm-up, the flows' usual guard against early NaNs.
            schedule: after the warm-up, "constant" (a run resumed for more epochs continues it unchanged) or
                "cosine" decay to 0 over the run's steps. A resumed run follows the schedule of its own command line
                from the step it resumes at (so `--trainer.max_epochs` can lengthen a run).
            cooldown_fraction: with the constant schedule, a half-cosine decay to 0 over this fraction of the
                run's steps, at its end (warm-up, stable, decay: Hagele et al. 2024). A constant run of E epochs
                resumed with `--trainer.max_epochs 2E --model.cooldown_fraction 0.5` anneals over the E new
                epochs what the first E learnt.
            weight_decay: L2 penalty of Adam (the paper uses 5e-5).
            compile: run the flow's forward pass (the likelihood; sampling's inverse stays eager) through
                torch.compile, in place: the state_dict keys stay the plain ones, so a checkpoint loads with or
                without the flag.
        """
        super().__init__()
        if image_shape is None:
            raise ValueError("realnvp models images: pick an image DataModule, e.g. --data mnist")
        if not 0 <= cooldown_fraction <= 1:
            raise ValueError(
                f"--model.cooldown_fraction must be in [0, 1] (a share of the run), got {cooldown_fraction}"
            )
        if cooldown_fraction and schedule != "constant":
            raise ValueError(
                "--model.cooldown_fraction decays the constant schedule: drop it or use --model.schedule constant"
            )
        if not 0 < alpha < 0.5:
            raise ValueError(f"--model.alpha must be in (0, 0.5), got {alpha}")
        self.save_hyperparameters()
        shape = tuple(image_shape)
        self.dims = math.prod(shape)
        self.flow = MultiScaleFlow(shape, scales, stage_couplings, final_couplings, hidden_channels,
                                   residual_blocks, norm)  # fmt: skip
        self.dequantizer = (
            VariationalDequantization(shape, dequantization_couplings, hidden_channels, residual_blocks)
            if dequantization == "variational"
            else UniformDequantization()
        )
        if compile:
            self.flow.compile()
        self.actnorms = [m for m in self.flow.modules() if isinstance(m, ActNorm)]  # a plain list: not registered twice
        self.val_bits = MeanMetric()
        self.test_bits = MeanMetric()

    # --- the likelihood ----------------------------------------------------------------------------
    def continuous_log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p_y(y) per example for y in [0, 1]^D: the flow's Gaussian through the logit transform (change of
        variables, eq. 3), in fp32."""
        z0, log_det_logit = logit_transform(y, self.hparams.alpha)
        if self.training and not all(norm.seen_initialised for norm in self.actnorms):
            with torch.no_grad():  # ActNorm's data-dependent initialisation eagerly (.forward skips torch.compile), so
                self.flow.forward(z0)  # that it never breaks the compiled graph (which left per-layer entries behind)
        z, log_det_flow = self.flow(z0)
        return log_standard_normal(z) + log_det_flow + log_det_logit

    def log_prob(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The log-likelihood in nats of each 8-bit image x (B, C, H, W) in [0, 1]: the dequantisation bound of
        one noise draw, E_q[log p_y(y) - D log 256 - log q(u|x)] (exact in expectation up to the dequantiser's gap)."""
        y, log_q = self.dequantizer(to_levels(x), generator)
        return self.continuous_log_prob(y) - self.dims * math.log(LEVELS) - log_q

    def bits_per_dim(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return bits_per_dim(self.log_prob(x, generator), self.dims)

    def fp32_bits_per_dim(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """bits_per_dim with autocast off: what validation and testing report, whatever the run's precision.
        Under bf16 autocast only the coupling networks' convolutions run in bf16 (the affine updates, the
        log-determinants and the Gaussian stay fp32 by type promotion), which gives an exact likelihood of a
        slightly different function; the figures reported are those of the fp32 function, the one sampling
        inverts."""
        with torch.autocast(x.device.type, enabled=False):
            return self.bits_per_dim(x.float(), generator)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` images in [0, 1] from z ~ N(0, temperature^2 I) (Glow's reduced temperature draws fewer outliers)."""
        z = torch.randn(n, self.dims, device=self.device, generator=generator) * temperature
        # fp32 whatever the caller's autocast: an inverse through bf16 coupling networks rounds the networks'
        # inputs differently from the forward pass that scored the image, and 30 layers amplify it (0.08 off in
        # logit space after a round trip, against 5e-5 in fp32).
        with torch.autocast(z.device.type, enabled=False):
            y = inverse_logit_transform(self.flow.inverse(z), self.hparams.alpha)
        return (torch.floor(y * LEVELS).clamp(0, LEVELS - 1) / (LEVELS - 1)).reshape(n, *self.hparams.image_shape)

    # --- Lightning hooks -----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.bits_per_dim(batch[0]).mean()
        self.log("train/bits_per_dim", loss, prog_bar=True)
        return loss

    def fixed_generator(self, batch_idx: int) -> torch.Generator:
        """Evaluation's dequantisation noise comes from the batch index: the same figure every epoch and run."""
        return torch.Generator(device=self.device).manual_seed(batch_idx)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.val_bits.update(self.fp32_bits_per_dim(batch[0], self.fixed_generator(batch_idx)))
        self.log("val/bits_per_dim", self.val_bits, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        # Per image, then averaged (MeanMetric): each image's bits come from its own log-determinant.
        self.test_bits.update(self.fp32_bits_per_dim(batch[0], self.fixed_generator(batch_idx)))
        self.log("test/bits_per_dim", self.test_bits)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        h = self.hparams
        total = float(self.trainer.estimated_stepping_batches)
        if not h.get("cooldown_fraction"):  # .get: checkpoints saved before the flag existed
            return warmup_decay(optimizer, WarmupDecay(h.schedule, warmup_steps=h.warmup_steps, decay_end=total))
        if not math.isfinite(total):
            raise ValueError(
                "--model.cooldown_fraction needs a run of known length: set --trainer.max_epochs or --trainer.max_steps"
            )
        start = total - round(h.cooldown_fraction * total)
        return warmup_decay(optimizer, WarmupDecay("cosine", h.warmup_steps, decay_start=start, decay_end=total))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # LambdaLR would restore the saved schedule's fields over the ones this run's command line configured (its
        # length, its cool-down); keep only the step count, so that a resumed run can be lengthened or annealed.
        for scheduler in checkpoint.get("lr_schedulers", []):
            if "lr_lambdas" in scheduler:
                scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])
