"""Networks grown in stages: train a network, freeze it, attach a new one in series (reading its features) or in
parallel (beside it, reading the image), train the combination, and so on for K stages; the alternative is the
network of the final size trained jointly from the start."""

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.blocks.activations import activation_class


def hidden_layers(n_in: int, width: int, depth: int, activation: str) -> nn.Sequential:
    """`depth` Linear layers of `width` units, each followed by the activation."""
    nonlinearity = activation_class(activation)
    layers = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else width, width), nonlinearity()]
    return nn.Sequential(*layers)


class StagedNetwork(L.LightningModule):
    """K stages, each a stack of hidden layers (a body) and a linear head. Stage k's network is bodies 0..k, in
    series (body k reads body k-1's features) or in parallel (every body reads the image, the head reads all their
    features), and head k. Stage k trains for `epochs_per_stage` epochs with bodies 0..k-1 frozen and out of the
    optimizer (a new AdamW over body k and head k at each switch); the last stage trains to the end of the run.
    With `joint` the final network (all bodies, one head) trains as one from the start. The test logs every
    trained stage's accuracy as test/acc_stage_k (the earlier stages' weights are untouched, so they are still the
    networks they were)."""

    benchmark_metric = "test/acc"

    def __init__(
        self,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        num_classes: int | None = 10,
        stages: int = 3,
        arrangement: Literal["series", "parallel"] = "series",
        width: int = 128,
        depth: int = 1,
        activation: str = "relu",
        epochs_per_stage: int = 1,
        joint: bool = False,
        lr: float = 1e-3,
        compile: bool = False,
    ) -> None:
        """
        Args:
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            num_classes: number of classes; set from the DataModule by scripts/fit.py.
            stages: K, the number of stages.
            arrangement: "series": each new body reads the previous one's features; "parallel": each reads the
                image, and the head reads all the bodies' features side by side.
            width: units of each hidden layer.
            depth: hidden layers per body.
            activation: a name of lightning_modules.blocks.activations.
            epochs_per_stage: epochs each stage but the last trains before the next is attached.
            joint: train the final network (all stages' bodies, the last head) as one, from the start.
            lr: AdamW's learning rate (a fresh optimiser for each stage).
            compile: run each body and head through torch.compile, in place: the state_dict keys stay the plain
                ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if image_shape is None or num_classes is None:
            raise ValueError("a staged network needs labelled image data: pick an image DataModule, e.g. --data mnist")
        for flag, value in (
            ("stages", stages),
            ("width", width),
            ("depth", depth),
            ("epochs_per_stage", epochs_per_stage),
        ):
            if value < 1:
                raise ValueError(f"--model.{flag} must be at least 1, got {value}")
        self.save_hyperparameters()
        pixels = math.prod(image_shape)
        series = arrangement == "series"
        self.bodies = nn.ModuleList(
            hidden_layers(width if series and k > 0 else pixels, width, depth, activation) for k in range(stages)
        )
        head_inputs = [width if series else width * (k + 1) for k in range(stages)]
        self.heads = nn.ModuleList(nn.Linear(n, num_classes) for n in (head_inputs[-1:] if joint else head_inputs))
        if compile:
            for network in (*self.bodies, *self.heads):
                network.compile()
        # The stage being trained, in the state_dict: a resumed run builds the optimiser of the stage it was in.
        self.register_buffer("stage", torch.tensor(stages - 1 if joint else 0))
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = nn.ModuleList(MulticlassAccuracy(num_classes, average="micro") for _ in self.heads)

    def features(self, images: torch.Tensor, stage: int) -> torch.Tensor:
        x = images.flatten(1)
        if self.hparams.arrangement == "parallel":
            return torch.cat([body(x) for body in self.bodies[: stage + 1]], dim=-1)
        for body in self.bodies[: stage + 1]:
            x = body(x)
        return x

    def head(self, stage: int) -> nn.Linear:
        return self.heads[0 if self.hparams.joint else stage]

    def logits(self, images: torch.Tensor, stage: int) -> torch.Tensor:
        """Stage `stage`'s network: bodies 0..stage and head `stage`."""
        return self.head(stage)(self.features(images, stage))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images, int(self.stage))

    def trainable(self, stage: int) -> list[nn.Parameter]:
        """The parameters stage `stage` trains: its body and head (every body in a joint run)."""
        bodies = self.bodies if self.hparams.joint else [self.bodies[stage]]
        return [p for module in (*bodies, self.head(stage)) for p in module.parameters()]

    def stage_of_epoch(self, epoch: int) -> int:
        if self.hparams.joint:
            return self.hparams.stages - 1
        return min(epoch // self.hparams.epochs_per_stage, self.hparams.stages - 1)

    def on_train_epoch_start(self) -> None:
        stage = self.stage_of_epoch(self.current_epoch)
        if stage != int(self.stage):
            self.stage.fill_(stage)
            self.trainer.strategy.setup_optimizers(self.trainer)  # calls configure_optimizers for the new stage

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/stage", self.stage.float())
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        logits = self(images)
        self.log("val/loss", F.cross_entropy(logits, labels), sync_dist=True)
        self.val_acc(logits, labels)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels = batch
        stage = int(self.stage)
        logits = self(images)
        self.log("test/loss", F.cross_entropy(logits, labels), sync_dist=True)
        if self.hparams.joint:
            self.test_acc[0](logits, labels)
            self.log("test/acc", self.test_acc[0])
            return
        for k in range(stage + 1):
            accuracy = self.test_acc[k]
            accuracy(logits if k == stage else self.logits(images, k), labels)
            self.log(f"test/acc_stage_{k}", accuracy)
        self.log("test/acc", self.test_acc[stage])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        stage = int(self.stage)
        active = {id(p) for p in self.trainable(stage)}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in active)
        return torch.optim.AdamW(self.trainable(stage), lr=self.hparams.lr)
