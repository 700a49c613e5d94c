"""Layers that give distribution parameters, not numbers: an MLP whose every hidden layer outputs the mean and log
standard deviation of a Gaussian over its units, the next layer reading a reparameterised sample; predictions
average the class probabilities of S samples."""

import math
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

from lightning_modules.blocks.activations import activation_class
from lightning_modules.classifiers.classifier import Backbone, ImageClassifier

CALIBRATION_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017, eq. 3)
EVALUATED_SAMPLES = (1, 4, 16, 64)  # the S of evaluate()'s table


def reparameterise(
    mu: torch.Tensor, log_sigma: torch.Tensor, generator: torch.Generator | None = None, shared: bool = False
) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10): a sample through which gradients reach
    mu and log sigma. With `shared` one eps (over the last dimension) serves every row of the batch."""
    shape = mu.shape[-1:] if shared else mu.shape
    eps = torch.randn(shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + log_sigma.exp() * eps


def kl_to_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) = (mu^2 + sigma^2 - 1) / 2 - log sigma per unit (Kingma & Welling 2014,
    appendix B), summed over the last dimension."""
    return (0.5 * (mu.square() + (2 * log_sigma).exp() - 1) - log_sigma).sum(-1)


class StochasticMLP(nn.Module):
    """Flatten, then per hidden width a Linear layer giving (mu, log sigma) of its units, a reparameterised sample
    and the activation of the sample; a Linear head. With `stochastic` off the layers give mu alone: the plain MLP
    of the same widths (the comparison)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        widths: Sequence[int] = (256, 256),
        activation: str = "relu",
        stochastic: bool = True,
        init_log_sigma: float = -2.0,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the input images.
            num_classes: number of logits.
            widths: widths of the hidden layers, in order.
            activation: applied to each layer's sample: a name of lightning_modules.blocks.activations.
            stochastic: each hidden layer gives a Gaussian (mu, log sigma); off: a plain MLP of the same widths.
            init_log_sigma: initial bias of every log sigma (-2: sigma = 0.14 at the start).
        """
        super().__init__()
        self.nonlinearity = activation_class(activation, "--model.backbone.activation")()
        self.stochastic = stochastic
        sizes = [math.prod(image_shape), *widths]
        self.hidden = nn.ModuleList(
            nn.Linear(n_in, n_out * (2 if stochastic else 1)) for n_in, n_out in zip(sizes, sizes[1:], strict=False)
        )
        if stochastic:
            for layer, width in zip(self.hidden, widths, strict=True):
                nn.init.constant_(layer.bias[width:], init_log_sigma)
        self.head = nn.Linear(sizes[-1], num_classes)

    def sample_logits(
        self, images: torch.Tensor, generator: torch.Generator | None = None, shared: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass with one sample per layer: the logits (B, classes) and the KL of all the layers' Gaussians to
        N(0, I), (B,) (zeros for the plain network). With `shared` the examples of the batch share each layer's
        noise, so that an image's pass does not depend on the batch it is in."""
        h = images.flatten(1)
        kl = h.new_zeros(len(h))
        for layer in self.hidden:
            z = layer(h)
            if self.stochastic:
                mu, log_sigma = z.chunk(2, dim=-1)
                # In fp32: exp(log sigma) and the KL's logs lose the small sigmas in bf16.
                mu, log_sigma = mu.float(), log_sigma.float()
                z = reparameterise(mu, log_sigma, generator, shared)
                kl = kl + kl_to_standard_normal(mu, log_sigma)
            h = self.nonlinearity(z)
        return self.head(h), kl

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.sample_logits(images)[0]


class StochasticMLPClassifier(ImageClassifier):
    """An ImageClassifier of a StochasticMLP: trained on one sample per layer with NLL (+ kl_weight times the KL to
    a standard normal prior), predicting with the class probabilities averaged over `samples` passes. Test
    metrics add the expected calibration error; evaluate() gives accuracy and calibration for S = 1, 4, 16, 64."""

    def __init__(
        self,
        backbone: Backbone = StochasticMLP,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        num_classes: int | None = 10,
        samples: int = 16,
        kl_weight: float = 0.0,
        prediction_seed: int = 0,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        schedule: Literal["constant", "cosine", "step"] = "constant",
        warmup_epochs: float = 0.0,
        milestones: list[float] = (0.5, 0.75),
        label_smoothing: float = 0.0,
    ) -> None:
        """
        Args:
            backbone: a network with `sample_logits(images, generator) -> (logits, kl)`; StochasticMLP by default,
                its options as init_args (--model.backbone.stochastic false: the plain MLP).
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            num_classes: number of classes; set from the DataModule by scripts/fit.py.
            samples: S, the passes whose predictive probabilities are averaged in validation, test and predict.
            kl_weight: weight of the KL of the layers' Gaussians to N(0, I) in the loss; 0: NLL alone.
            prediction_seed: seed of the draws of validation, test and predict, each batch from the start, so that
                a checkpoint's predictions repeat, whatever the batch.
            optimizer, lr, weight_decay, momentum, nesterov, schedule, warmup_epochs, milestones, label_smoothing:
                as ImageClassifier's.
        """
        if samples < 1:
            raise ValueError(f"--model.samples must be at least 1, got {samples}")
        super().__init__(
            backbone, image_shape, num_classes, optimizer, lr, weight_decay, momentum, nesterov, schedule,
            warmup_epochs, milestones, label_smoothing,
        )  # fmt: skip
        if not callable(getattr(self.backbone, "sample_logits", None)):
            raise ValueError(
                f"--model.backbone {type(self.backbone).__name__} has no sample_logits(images, generator, shared); "
                "use lightning_modules.experiments.stochastic_mlp.StochasticMLP"
            )
        self.test_ece = MulticlassCalibrationError(self.hparams.num_classes, n_bins=CALIBRATION_BINS)

    def predictive_log_probs(
        self, images: torch.Tensor, samples: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """log (1/S) sum_s softmax(logits_s): the log of the S passes' averaged class probabilities, (B, classes),
        in fp32 (a log-mean-exp). The examples share each pass's draws: an image's prediction is the same in any
        batch (each image still averages S independent draws)."""
        log_probs = [
            F.log_softmax(self.backbone.sample_logits(images, generator, shared=True)[0].float(), -1)
            for _ in range(samples)
        ]
        return torch.stack(log_probs).logsumexp(0) - math.log(samples)

    def prediction_generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Log predictive probabilities (logits of the averaged prediction: cross-entropy of them is its NLL)."""
        generator = self.prediction_generator(self.hparams.prediction_seed)
        return self.predictive_log_probs(images, self.hparams.samples, generator)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits, kl = self.backbone.sample_logits(images)
        nll = self.classification_loss(logits.float(), labels)
        loss = nll + self.hparams.kl_weight * kl.mean()
        self.log_dict({"train/loss": loss, "train/nll": nll, "train/kl": kl.mean()}, prog_bar=False)
        return loss

    def test_step(self, batch, batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        images, labels = batch
        self.test_ece(self(images).exp(), labels)  # the same seeded draws as the accuracy's
        self.log("test/ece", self.test_ece)

    def evaluate(self, datamodule: L.LightningDataModule | None) -> dict[str, float]:
        """Test-split accuracy and expected calibration error of the S-sample prediction, S = 1, 4, 16, 64:
        `acc_S{S}`, `ece_S{S}`."""
        if datamodule is None:
            return {}
        images, labels = datamodule.batch("test", n=len(datamodule.dataset("test")), device=self.device)
        figures = {}
        for samples in EVALUATED_SAMPLES:
            probs = self.predictive_log_probs(images, samples, self.prediction_generator(self.hparams.prediction_seed))
            probs = probs.exp()
            classes = self.hparams.num_classes
            figures[f"acc_S{samples}"] = float(multiclass_accuracy(probs, labels, classes, average="micro"))
            figures[f"ece_S{samples}"] = float(
                multiclass_calibration_error(probs, labels, classes, n_bins=CALIBRATION_BINS)
            )
        return figures
