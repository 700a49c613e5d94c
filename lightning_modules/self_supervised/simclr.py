"""SimCLR (Chen et al. 2020): a backbone and a projection head trained so that two random views of an image
are told apart from the views of every other image in the batch (the NT-Xent loss, eq. 1). The representation
is the backbone's pooled output (`embed`), never the projection (sec. 4.2: the layer before the head is the
better representation)."""

import contextlib
from typing import Literal

import lightning as L
import torch
from torch import nn

from lightning_modules.blocks.resnet import ResNet
from lightning_modules.classifiers.classifier import Backbone, as_class_path
from lightning_modules.optim import LARS, decay_groups, warmup_decay_over_run
from lightning_modules.representation import knn_accuracy, linear_probe_accuracy, split_features
from lightning_modules.self_supervised.nt_xent import nt_xent_loss
from lightning_modules.self_supervised.views import simclr_view


class Pixels(nn.Module):
    """The images themselves as the representation, flattened: the floor a learned one must beat (a kNN or a
    linear probe on raw pixels). Built as a backbone, from the image shape; it has no parameters."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int = 0) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class SimCLR(L.LightningModule):
    """Backbone f, projection head g(h) = W2 relu(W1 h) (sec. 2.1), NT-Xent over two views of each image."""

    benchmark_metric = "knn/acc"  # logged by callbacks.knn_probe.KNNProbe at the end of testing

    def __init__(
        self,
        backbone: Backbone = ResNet,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        hidden_dim: int = 512,
        projection_dim: int = 128,
        projector_batchnorm: bool = False,
        temperature: float = 0.5,
        optimizer: Literal["lars", "adamw"] = "lars",
        lr: float = 1.0,
        weight_decay: float = 1e-6,
        momentum: float = 0.9,
        warmup_epochs: float = 10.0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        flip_views: bool = True,
        jitter_strength: float = 0.5,
        grayscale_p: float = 0.2,
        blur_min_size: int = 64,
        compile: bool = False,
    ) -> None:
        """
        Args:
            backbone: the network, called as backbone(image_shape, 0) and expected to return features (B, D):
                lightning_modules.blocks.resnet.ResNet by class path (depth 20 by default; depth 18 is ResNet-18
                with the 3x3 stem, for 32x32 colour images), or Pixels for the raw-pixel floor.
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            hidden_dim: width of the projection head's hidden layer.
            projection_dim: output of the projection head, where the loss is computed.
            projector_batchnorm: batch normalisation after the head's hidden layer, as in the paper's code (its
                heads normalise every layer) and lightly's SimCLRProjectionHead.
            temperature: NT-Xent's temperature t (eq. 1; 0.5 for CIFAR-10 in the paper, B.9).
            optimizer: "lars" (You et al. 2017, as the paper) or "adamw".
            lr: base learning rate, for the whole batch (the paper: 0.3 x batch / 256 with LARS).
            weight_decay: on weight matrices and kernels only (the paper: 1e-6).
            momentum: LARS momentum.
            warmup_epochs: linear warm-up before the cosine decay (the paper: 10 epochs).
            crop_scale: range of the crops' share of the image area (RandomResizedCrop's scale).
            flip_views: random left-right flips of the views; off for digits, whose mirror images are other
                symbols.
            jitter_strength: colour distortion strength s (appendix A: 0.5 for CIFAR-10); 0 switches it off.
            grayscale_p: probability of a grey view of a colour image.
            blur_min_size: images this many pixels or larger are blurred (probability 1/2), smaller ones never.
            compile: run the backbone and the projection head through torch.compile, in place: the state_dict keys
                stay the plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if image_shape is None:
            raise ValueError("SimCLR needs image data: pick an image DataModule, e.g. --data fashion_mnist")
        if temperature <= 0:
            raise ValueError(f"--model.temperature must be positive, got {temperature}")
        self.save_hyperparameters()
        if not isinstance(self.hparams.backbone, dict):  # built in Python: record names, not code (see classifier)
            self.hparams.backbone = as_class_path(backbone)
            self.hparams["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
        self.backbone = backbone(tuple(image_shape), 0)
        features = self.feature_dim(tuple(image_shape))
        hidden = (
            [nn.Linear(features, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim)]  # the norm's shift is the bias
            if projector_batchnorm
            else [nn.Linear(features, hidden_dim)]
        )
        self.projector = nn.Sequential(*hidden, nn.ReLU(), nn.Linear(hidden_dim, projection_dim))
        if compile:
            self.backbone.compile()
            self.projector.compile()

    @torch.no_grad()
    def feature_dim(self, image_shape: tuple[int, int, int]) -> int:
        """The width of the backbone's output, from one forward pass in eval mode (BatchNorm untouched)."""
        self.backbone.eval()
        probe = torch.zeros(2, *image_shape)
        dim = self.backbone(probe).shape[1]
        self.backbone.train()
        return dim

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("backbone")
        if isinstance(saved, dict):
            self.hparams.backbone = saved

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The representation of images in [0, 1]: the backbone's pooled output (B, D), not the projection."""
        return self.backbone(x)

    def evaluate(self, datamodule: L.LightningDataModule | None, k: int = 200) -> dict[str, float]:
        """What scripts/evaluate.py prints after the test loss, as the KNNProbe callback logs them at the end of a
        run: the weighted kNN accuracy (k neighbours, temperature 0.1) of the test split against the whole training
        split in `embed` space, and the test accuracy of a linear probe fitted to the frozen training features."""
        train, test = (split_features(self, datamodule, split, None, 512, self.device) for split in ("train", "test"))
        return {"knn_acc": knn_accuracy(train, test, k), "probe_acc": linear_probe_accuracy(train, test)}

    def views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Two random views of each image, stacked: (2B, C, H, W), first views then second views."""
        h = self.hparams
        options = {
            "crop_scale": tuple(h.crop_scale),
            "hflip": h.flip_views,
            "jitter_strength": h.jitter_strength,
            "grayscale_p": h.grayscale_p,
            "blur_min_size": h.blur_min_size,
            "generator": generator,
        }
        return torch.cat([simclr_view(images, **options), simclr_view(images, **options)])

    def loss(self, images: torch.Tensor, generator: torch.Generator | None = None, gather: bool = True) -> torch.Tensor:
        """NT-Xent of two fresh views of each image; with `gather` against the global batch under DDP."""
        # Lightning's profiler (--trainer.profiler simple) times the views apart from the rest of the step.
        profiler = self._trainer.profiler if self._trainer is not None else None
        with profiler.profile("simclr_views") if profiler is not None else contextlib.nullcontext():
            views = self.views(images, generator)
        z1, z2 = self.projector(self.backbone(views)).chunk(2)
        return nt_xent_loss(z1, z2, self.hparams.temperature, gather)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch[0])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def held_out_loss(self, batch, batch_idx: int) -> torch.Tensor:
        """The loss of views drawn from a generator seeded by the batch index: the same views at every
        evaluation. Within each process's share: evaluation batches need not be the same size everywhere."""
        return self.loss(batch[0], torch.Generator(device=self.device).manual_seed(batch_idx), gather=False)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.held_out_loss(batch, batch_idx), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self.held_out_loss(batch, batch_idx), sync_dist=True)

    def configure_optimizers(self):
        h = self.hparams
        groups = decay_groups(self.parameters(), h.weight_decay)
        if h.optimizer == "lars":
            optimizer = LARS(groups, lr=h.lr, momentum=h.momentum)
        else:
            optimizer = torch.optim.AdamW(groups, lr=h.lr)
        return warmup_decay_over_run(optimizer, self.trainer, "cosine", h.warmup_epochs)
