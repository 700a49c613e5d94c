"""Quality metrics shared by families. The offline FID: torchmetrics' `FrechetInceptionDistance` over the
penultimate-layer features of the project's own MNIST-family classifier (Inception weights cannot be
downloaded offline), and over Inception-v3 features as well when a weights file is at hand.

    fid = ClassifierFID("runs/fid/lenet5_mnist.ckpt")
    fid.set_real(test_images, cache_key="mnist-test")  # float (N, C, H, W) in [0, 1]
    fid.score(samples)                                  # {"fid": ...}; call again for other samples

FID is biased by the sample size: compare scores computed with the same number of samples only, and against
the floor (`fid_floor`, training images against the same real set) at that number.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_modules.checkpoint import load_model
from lightning_modules.protocols import Encodes, Samples

# The states in which FrechetInceptionDistance accumulates the real side; the cache holds these.
REAL_STATES = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


class ClassifierFeatures(nn.Module):
    """Penultimate-layer features of a trained ImageClassifier: the input of the nn.Linear that produces its
    logits, found by running the model once (no knowledge of the backbone's attribute names). Takes images
    float in [0, 1] of shape (B, C, H, W); other sizes are resized (bilinear, antialiased) and other channel
    counts mapped (grey repeated, colour to luma, as the DataModules do) to the classifier's `image_shape`.
    Always in eval mode, without gradients. `num_features` is what torchmetrics reads."""

    def __init__(self, classifier: L.LightningModule) -> None:
        """
        Args:
            classifier: a trained classifier whose logits come from a final nn.Linear and whose
                hyper-parameters hold `image_shape` (every ImageClassifier does); it is put in eval mode and
                frozen.
        """
        super().__init__()
        image_shape = getattr(classifier, "hparams", {}).get("image_shape")
        if image_shape is None:
            raise ValueError(f"{type(classifier).__name__} records no image_shape; pass an ImageClassifier")
        self.image_shape = tuple(image_shape)
        self.classifier = classifier.eval().requires_grad_(False)
        self.last_linear = self.find_last_linear()
        self._captured: torch.Tensor | None = None
        self.last_linear.register_forward_pre_hook(self._capture)
        self.num_features = self.last_linear.in_features
        self.eval()

    @torch.no_grad()
    def find_last_linear(self) -> nn.Linear:
        """The nn.Linear run last in a forward pass, checked to be the one whose output is the logits."""
        calls: list[tuple[nn.Linear, torch.Tensor]] = []
        hooks = [
            module.register_forward_hook(lambda module, args, output: calls.append((module, output)))
            for module in self.classifier.modules()
            if isinstance(module, nn.Linear)
        ]
        try:
            # Its own generator: building a metric must not move the training's random stream.
            probe = torch.rand(2, *self.image_shape, generator=torch.Generator().manual_seed(0))
            logits = self.classifier(probe.to(self.classifier.device))
        finally:
            for hook in hooks:
                hook.remove()
        if not calls or not torch.equal(calls[-1][1], logits):
            raise ValueError(
                f"{type(self.classifier).__name__}'s logits do not come from a final nn.Linear; "
                "its penultimate features cannot be found"
            )
        return calls[-1][0]

    def _capture(self, module: nn.Module, args: tuple) -> None:
        self._captured = args[0]

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        # A feature extractor must not switch dropout on when the module that holds it starts training.
        return super().train(False)

    def fit_to_classifier(self, images: torch.Tensor) -> torch.Tensor:
        """Images mapped to the classifier's (C, H, W)."""
        channels, height, width = self.image_shape
        if images.ndim != 4:
            raise ValueError(f"FID features need images of shape (B, C, H, W), got shape {tuple(images.shape)}")
        if images.shape[1] != channels:
            if images.shape[1] == 1:
                images = images.expand(-1, channels, -1, -1)
            elif images.shape[1] == 3 and channels == 1:
                images = TF.rgb_to_grayscale(images)
            else:
                raise ValueError(f"cannot map {images.shape[1]}-channel images to the classifier's {channels}")
        if images.shape[-2:] != (height, width):
            images = nn.functional.interpolate(
                images, size=(height, width), mode="bilinear", align_corners=False, antialias=True
            )
        return images

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.classifier(self.fit_to_classifier(images.float()))
        features, self._captured = self._captured, None
        return features.flatten(1)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ClassifierFeatures":
        """The features of the ImageClassifier saved in `path` by scripts/fit.py."""
        from lightning_modules.classifiers.classifier import (
            ImageClassifier,  # the classifier module is large; load on use
        )

        if not Path(path).is_file():
            raise FileNotFoundError(
                f"classifier checkpoint {path} not found; train one with "
                "python scripts/fit.py --model lenet5 --data mnist (or fashion_mnist)"
            )
        model = load_model(path)
        if not isinstance(model, ImageClassifier):
            raise ValueError(
                f"checkpoint {path} holds a {type(model).__name__}, not an ImageClassifier; "
                "pass one trained with scripts/fit.py --model lenet5 or --model convnet"
            )
        return cls(model)


def check_images(images: torch.Tensor, what: str) -> None:
    """One clear line for the usual mistakes: wrong shape, too few images, the model's own [-1, 1] range."""
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"{what} must be at least 2 images of shape (N, C, H, W), got shape {tuple(images.shape)}")
    low, high = images.min().item(), images.max().item()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"{what} must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; map [-1, 1] images with (x + 1) / 2"
        )


class ClassifierFID:
    """FID of generated images against a fixed real set: torchmetrics' FrechetInceptionDistance over
    ClassifierFeatures (key "fid") and, when `inception_weights_path` is given, over Inception-v3's 2048
    pool features (key "fid_inception", `antialias=False` like the papers' TensorFlow code). The real
    statistics are kept across `score` calls; each call replaces the fake side. Scores are per process:
    under DDP, score on one rank (or gather the samples first)."""

    def __init__(
        self,
        classifier_ckpt: str | Path,
        inception_weights_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 500,
    ) -> None:
        """
        Args:
            classifier_ckpt: an ImageClassifier checkpoint written by scripts/fit.py (e.g. --model lenet5).
            inception_weights_path: torch-fidelity's pt_inception-2015-12-05 weights file; None: classifier
                FID only.
            device: where features are computed.
            batch_size: images per forward pass of the feature extractors.
        """
        if batch_size < 1:
            raise ValueError(f"ClassifierFID batch_size must be at least 1, got {batch_size}")
        self.classifier_ckpt, self.batch_size, self.device = Path(classifier_ckpt), batch_size, torch.device(device)
        self.metrics = {"fid": self.frechet(feature=ClassifierFeatures.from_checkpoint(classifier_ckpt))}
        if inception_weights_path is not None:
            self.metrics["fid_inception"] = self.frechet(**inception_options(inception_weights_path))
        self.has_real = False

    def frechet(self, **options) -> FrechetInceptionDistance:
        # The real side survives reset(); syncing across processes is left to the caller (see the class).
        metric = FrechetInceptionDistance(reset_real_features=False, normalize=True, sync_on_compute=False, **options)
        return metric.to(self.device)

    def cache_path(self, cache_key: str) -> Path:
        """`<classifier checkpoint>.fid-<cache_key>.pt`."""
        if not re.fullmatch(r"[\w.-]+", cache_key):
            raise ValueError(f"FID cache_key {cache_key!r} must be letters, digits, '_', '-' or '.' (a file name part)")
        return self.classifier_ckpt.with_name(f"{self.classifier_ckpt.name}.fid-{cache_key}.pt")

    def update(self, name: str, images: torch.Tensor, real: bool) -> None:
        metric = self.metrics[name]
        for chunk in images.split(self.batch_size):
            chunk = chunk.to(self.device, torch.float32)
            # Inception takes 3 channels; grey images are repeated, as is usual for MNIST-family FIDs.
            metric.update(chunk.expand(-1, 3, -1, -1) if name == "fid_inception" else chunk, real=real)

    @torch.no_grad()
    def set_real(self, images: torch.Tensor, cache_key: str | None = None) -> None:
        """Compute the real statistics from `images` (float (N, C, H, W) in [0, 1]), replacing earlier ones.

        Args:
            images: the real set, e.g. the test set.
            cache_key: with a key, the statistics are saved to `<classifier checkpoint>.fid-<cache_key>.pt` and
                later calls with the same key load them instead of looking at `images`: only the key and the
                classifier checkpoint (its content, by hash) decide, so give each real set its own key.
        """
        cache = self.read_cache(cache_key) if cache_key is not None else {}
        computed = False
        for name, metric in self.metrics.items():
            if name in cache:
                for state in REAL_STATES:
                    setattr(metric, state, cache[name][state].to(self.device))
                continue
            if not computed:
                check_images(images, "FID real images")
            metric.reset_real_features = True  # the documented switch: reset() clears the real side too
            metric.reset()
            metric.reset_real_features = False
            self.update(name, images, real=True)
            cache[name] = {state: getattr(metric, state).cpu() for state in REAL_STATES}
            computed = True
        if cache_key is not None and computed:
            torch.save({"classifier_sha256": self.classifier_hash(), **cache}, self.cache_path(cache_key))
        self.has_real = True

    def classifier_hash(self) -> str:
        return hashlib.sha256(self.classifier_ckpt.read_bytes()).hexdigest()

    def read_cache(self, cache_key: str) -> dict[str, dict[str, torch.Tensor]]:
        """The cached statistics per metric name; empty when absent or made with another classifier."""
        path = self.cache_path(cache_key)
        if not path.is_file():
            return {}
        try:
            cache = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed and overwritten
            return {}
        if cache.get("classifier_sha256") != self.classifier_hash():
            return {}
        return {name: stats for name, stats in cache.items() if name in self.metrics}

    @torch.no_grad()
    def score(self, fake: torch.Tensor) -> dict[str, float]:
        """FID of `fake` (float (N, C, H, W) in [0, 1], N >= 2) against the real statistics of `set_real`.

        Returns:
            {"fid": classifier FID}, plus {"fid_inception": Inception FID} when its weights were given.
        """
        if not self.has_real:
            raise ValueError("ClassifierFID.score needs the real statistics: call set_real(images) first")
        check_images(fake, "FID samples")
        scores = {}
        for name, metric in self.metrics.items():
            metric.reset()  # the fake side only: reset_real_features=False
            self.update(name, fake, real=False)
            scores[name] = float(metric.compute())
        return scores


def inception_options(weights_path: str | Path) -> dict:
    """FrechetInceptionDistance's options for Inception-v3 features read from a local weights file."""
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not Path(weights_path).is_file():
        raise FileNotFoundError(
            f"Inception weights {weights_path} not found; pass torch-fidelity's pt_inception-2015-12-05 .pth file"
        )
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ValueError("the Inception FID needs torch-fidelity: pip install torch-fidelity")
    return {"feature": 2048, "feature_extractor_weights_path": str(weights_path), "antialias": False}


def fid_floor(fid: ClassifierFID, train_images: torch.Tensor, n: int, seed: int = 0) -> dict[str, float]:
    """The FID of `n` training images drawn at random (seeded) against `fid`'s real set: the score of a
    perfect generator with `n` samples, the floor to read a model's score against.

    Args:
        fid: a ClassifierFID whose real statistics are set (e.g. from the test set).
        train_images: the training images, float (N, C, H, W) in [0, 1].
        n: how many to score; at most N.
        seed: seed of the draw.
    """
    if not 2 <= n <= len(train_images):
        raise ValueError(f"the FID floor needs 2 <= n <= {len(train_images)} (the training images), got {n}")
    chosen = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[:n]
    return fid.score(train_images[chosen])


@torch.no_grad()
def predicted_labels(features: ClassifierFeatures, images: Tensor, batch_size: int = 500) -> Tensor:
    """The class the classifier (of the FID's features) gives each of `images` (in [0, 1]), (N,) int64 on the CPU."""
    classifier = features.classifier
    return torch.cat([classifier(features.fit_to_classifier(chunk.to(classifier.device))).argmax(1).cpu()
                      for chunk in images.split(batch_size)])  # fmt: skip


def real_set_key(images: torch.Tensor) -> str:
    """A cache key for `ClassifierFID.set_real` that tells real sets apart: their count, shape and pixel sum."""
    return f"{len(images)}x{'x'.join(map(str, images.shape[1:]))}-{images.sum().item():.0f}"


SAMPLE_BATCH = 500  # samples drawn per call of model.sample when scoring: a model's labels 0, 1, 2, ... restart at each


@torch.no_grad()
def draw_samples(
    model: Samples, n: int, sample_args: dict[str, Any], seed: int = 0, batch_size: int = SAMPLE_BATCH
) -> Tensor:
    """`n` samples of `model.sample(k, **sample_args)` on the CPU, drawn `batch_size` at a time from the global
    random stream seeded with `seed` inside `torch.random.fork_rng`, so the caller's stream is left as it was."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"drawing samples needs n >= 1 and batch_size >= 1, got {n} and {batch_size}")
    device = getattr(model, "device", torch.device("cpu"))
    accelerator = [] if device.type == "cpu" else [device]
    with torch.random.fork_rng(devices=accelerator, device_type=None if device.type == "cpu" else device.type):
        torch.manual_seed(seed)
        chunks = [
            model.sample(min(batch_size, n - done), **sample_args).float().cpu() for done in range(0, n, batch_size)
        ]
    return torch.cat(chunks)


def fid_of_samples(
    model: Samples, fid: ClassifierFID, n: int, sample_args: dict[str, Any], seed: int = 0, batch_size: int = 500
) -> float:
    """The classifier FID of `n` seeded samples of `model` (drawn with `sample_args`) against `fid`'s real set."""
    return fid.score(draw_samples(model, n, sample_args, seed, batch_size))["fid"]


@torch.no_grad()
def reconstruction_mse(model: Encodes, images: Tensor) -> float:
    """Mean squared error of decode(encode(x)) against x, in the images' [0, 1] units (for a diffusion model:
    DDIM inversion followed by regeneration)."""
    return float((model.decode(model.encode(images)) - images).pow(2).mean())
