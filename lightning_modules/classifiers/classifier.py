"""Image classification: one LightningModule that trains any backbone network with cross-entropy, and reports
top-1 accuracy on the validation and test sets."""

import functools
import re
from collections.abc import Callable
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.blocks.small_nets import LeNet5
from lightning_modules.optim import decay_groups, warmup_decay_over_run

# A backbone is built from the data's (C, H, W) image shape and class count, which the model passes; its own
# options are given by class path (configs/resnet.yaml: lightning_modules.blocks.resnet.ResNet, depth 20).
Backbone = Callable[[tuple[int, int, int], int], nn.Module]


def as_class_path(backbone: Backbone) -> dict | Backbone:
    """A backbone class, or a functools.partial of one with keyword options, as LightningCLI records it
    ({"class_path": ..., "init_args": ...}), so that a checkpoint of a model built in Python holds names, not
    code, and loads with weights_only=True. Other callables are returned as they are."""
    options = {}
    if isinstance(backbone, functools.partial) and not backbone.args:
        backbone, options = backbone.func, dict(backbone.keywords)
    if not isinstance(backbone, type):
        return backbone
    return {"class_path": f"{backbone.__module__}.{backbone.__qualname__}", "init_args": options}


class ImageClassifier(L.LightningModule):
    """A backbone network, trained with cross-entropy (optionally label-smoothed, optionally on mixup
    batches), AdamW or SGD with a schedule."""

    benchmark_metric = "test/acc"

    def __init__(
        self,
        backbone: Backbone = LeNet5,
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
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        """
        Args:
            backbone: the network, called as backbone(image_shape, num_classes): a class of
                lightning_modules.blocks (MLP, ConvNet, LeNet5, ResNet, ViT, HybridViT, PixelAttention) by class
                path, its options as init_args (on the command line --model.backbone.depth 56), or from Python
                any such callable, e.g. functools.partial(ResNet, depth=56). Default LeNet-5.
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
            channels_last: keep the backbone's kernels and its input images in channels-last memory order (NHWC),
                which oneDNN's and cuDNN's convolutions prefer (ResNet-20 on the CPU: 1.17x in fp32, 1.09x in
                bf16; a U-Net with GroupNorm loses in bf16, so it is a flag, not a rule).
            compile: compile the backbone in place (torch.compile); its state_dict keys stay the plain ones.
        """
        super().__init__()
        if image_shape is None or num_classes is None:
            raise ValueError(
                "an image classifier needs labelled image data: pick an image DataModule, e.g. --data mnist"
            )
        self.save_hyperparameters()
        if not isinstance(self.hparams.backbone, dict):  # built in Python, not by LightningCLI (which records it)
            self.hparams.backbone = as_class_path(backbone)
            # Lightning rebuilds a class path through LightningCLI's instantiator when loading a checkpoint.
            self.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
        self.backbone = backbone(tuple(image_shape), num_classes)
        if orthogonal_pattern is not None:
            self.parametrize_orthogonal(orthogonal_pattern, orthogonal_map)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if compile:
            self.backbone.compile()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Rebuilt from a class path, the model was handed a callable; keep recording the names the checkpoint holds.
        saved = checkpoint.get("hyper_parameters", {}).get("backbone")
        if isinstance(saved, dict):
            self.hparams.backbone = saved

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
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
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

    def score_split(self, batch, stage: str, accuracy: MulticlassAccuracy) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True)
        accuracy(logits, labels)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self.score_split(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self.score_split(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per image: the class probabilities, the predicted class and the true label."""
        images, labels = batch
        probabilities = F.softmax(self(images).float(), dim=-1)
        return {"probabilities": probabilities, "predicted": probabilities.argmax(-1), "label": labels}

    def configure_optimizers(self):
        hp = self.hparams
        groups = decay_groups(self.parameters(), hp.weight_decay)
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.nesterov)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        return warmup_decay_over_run(optimizer, self.trainer, hp.schedule, hp.warmup_epochs, hp.milestones)
