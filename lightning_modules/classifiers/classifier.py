"""Image classification: one LightningModule that trains any backbone of `BACKBONES` with cross-entropy, and
reports top-1 accuracy on the validation and test sets."""

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.blocks.resnet import ResNet
from lightning_modules.blocks.small_nets import MLP, ConvNet, LeNet5
from lightning_modules.blocks.vit import HybridViT, PixelAttention, ViT

BACKBONES = {
    "mlp": MLP,
    "convnet": ConvNet,
    "lenet5": LeNet5,
    "resnet": ResNet,
    "vit": ViT,
    "hybrid_vit": HybridViT,
    "pixel_attention": PixelAttention,
}


def build_backbone(name: str, image_shape: tuple[int, int, int], num_classes: int, args: dict) -> nn.Module:
    """The backbone `name` for these images, with `args` checked against what it accepts."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    accepted = [p for p in inspect.signature(BACKBONES[name]).parameters if p not in ("image_shape", "num_classes")]
    if name == "hybrid_vit":
        accepted += [p for p in inspect.signature(ViT).parameters if p not in ("image_shape", "num_classes")]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(
            f"backbone {name!r} does not take {', '.join(unknown)}; --model.backbone_args accepts {', '.join(accepted)}"
        )
    return BACKBONES[name](tuple(image_shape), num_classes, **args)


@dataclass
class LRFactor:
    """Multiplier of the base learning rate at optimiser step `step`: linear warm-up, then constant, cosine
    (Loshchilov & Hutter 2017, eq. 5 without restarts) or divided by 10 at each milestone (He et al. 2016,
    sec. 4.2). A plain object, so LambdaLR saves it in the checkpoint."""

    kind: str
    total_steps: float
    warmup_steps: int = 0
    milestones: list[float] = field(default_factory=list)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not math.isfinite(self.total_steps) or self.kind == "constant":
            return 1.0
        progress = min(step / max(self.total_steps, 1), 1.0)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 0.1 ** sum(progress >= m for m in self.milestones)


class ImageClassifier(L.LightningModule):
    """A backbone chosen by name, trained with cross-entropy (optionally label-smoothed, optionally on mixup
    batches), AdamW or SGD with a schedule."""

    benchmark_metric = "test/acc"

    def __init__(
        self,
        backbone: str = "lenet5",
        backbone_args: dict | None = None,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        num_classes: int | None = 10,
        optimizer: Literal["adamw", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        schedule: Literal["constant", "cosine", "step"] = "constant",
        warmup_epochs: float = 0.0,
        milestones: list[float] = (0.5, 0.75),
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        orthogonal_pattern: str | None = None,
        orthogonal_map: Literal["cayley", "matrix_exp", "householder"] = "cayley",
    ) -> None:
        """
        Args:
            backbone: one of mlp, convnet, lenet5, resnet, vit, hybrid_vit, pixel_attention.
            backbone_args: the backbone's own options, e.g. {"depth": 56} for resnet, {"patch_size": 7} for vit.
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            num_classes: number of classes; set from the DataModule by scripts/fit.py.
            optimizer: "adamw" or "sgd".
            lr: base learning rate.
            weight_decay: decoupled (AdamW) or L2 (SGD) decay, applied to weight matrices and kernels only.
            momentum: SGD momentum.
            nesterov: Nesterov momentum for SGD.
            schedule: learning-rate schedule over the run, per optimiser step: constant, cosine, or step (/10 at
                each milestone).
            warmup_epochs: linear learning-rate warm-up, in epochs (fractions allowed).
            milestones: fractions of the run at which the "step" schedule divides the rate by 10.
            label_smoothing: label smoothing of the cross-entropy (Szegedy et al. 2016, sec. 7).
            mixup_alpha: mixup's Beta(alpha, alpha) (Zhang et al. 2018); 0 turns mixup off.
            orthogonal_pattern: regex of module names (e.g. "backbone\\.[0-9]") whose Linear weights are kept
                (semi-)orthogonal by `torch.nn.utils.parametrizations.orthogonal`; the alternative to the
                OrthonormalProjection callback. None: off.
            orthogonal_map: how the parametrization maps its free parameters to an orthogonal matrix; the
                Cayley map is ten times faster than the others on a CPU for a 256x784 layer.
        """
        super().__init__()
        if image_shape is None or num_classes is None:
            raise ValueError(f"{backbone} needs labelled image data: pick an image DataModule, e.g. --data mnist")
        self.save_hyperparameters()
        self.backbone = build_backbone(backbone, image_shape, num_classes, dict(backbone_args or {}))
        if orthogonal_pattern is not None:
            self.parametrize_orthogonal(orthogonal_pattern, orthogonal_map)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def parametrize_orthogonal(self, pattern: str, orthogonal_map: str) -> None:
        matched = []
        for name, module in list(self.named_modules()):
            if not re.search(pattern, name) or not hasattr(module, "weight"):
                continue
            if isinstance(module, nn.Conv2d):
                raise ValueError(
                    f"orthogonal_pattern matches conv layer {name}: the parametrization treats a kernel as k x k "
                    "matrices; narrow the pattern to Linear layers, or use the OrthonormalProjection callback"
                )
            if isinstance(module, nn.Linear):
                orthogonal(module, orthogonal_map=orthogonal_map)
                matched.append(name)
        if not matched:
            raise ValueError(
                f"orthogonal_pattern {pattern!r} matches no Linear layer; module names look like backbone.1"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy -log softmax(logits)[label], with the configured label smoothing."""
        return F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)

    def mixup_loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mixup (Zhang et al. 2018, eq. 1): train on lam x_i + (1 - lam) x_j with the loss mixed the same way,
        lam ~ Beta(alpha, alpha), j a random permutation of the batch. Drawn on the batch's device: no sync."""
        alpha = torch.tensor(self.hparams.mixup_alpha, device=images.device)
        lam = torch.distributions.Beta(alpha, alpha, validate_args=False).sample()  # validation would sync
        partner = torch.randperm(len(images), device=images.device)
        logits = self(lam * images + (1 - lam) * images[partner])
        return lam * self.classification_loss(logits, labels) + (1 - lam) * self.classification_loss(
            logits, labels[partner]
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        if self.hparams.mixup_alpha > 0:
            loss = self.mixup_loss(images, labels)
        else:
            loss = self.classification_loss(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def score_batch(self, batch, stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        accuracy(logits, labels)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.score_batch(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self.score_batch(batch, "test", self.test_acc)

    def configure_optimizers(self):
        # Biases and norm scales (1-D) are not decayed: decay is meant to shrink weight matrices and kernels.
        decay = [p for p in self.parameters() if p.ndim >= 2]
        rest = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        hp = self.hparams
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = total / max(self.trainer.max_epochs, 1) if math.isfinite(total) else 0
        factor = LRFactor(hp.schedule, float(total), round(hp.warmup_epochs * steps_per_epoch), list(hp.milestones))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
