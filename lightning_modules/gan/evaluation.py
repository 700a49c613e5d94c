"""What a GAN's `evaluate` prints: the classifier FID of its samples and how evenly the classifier spreads them
over the classes (mode collapse leaves some classes nearly empty)."""

import lightning as L
import torch

from lightning_modules.metrics import ClassifierFeatures, ClassifierFID, draw_samples, predicted_labels, real_set_key
from lightning_modules.protocols import Samples


def class_shares(features: ClassifierFeatures, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """The share of `images` that the classifier (of the FID's features) assigns to each class, (num_classes,)."""
    predicted = predicted_labels(features, images, batch_size)
    return torch.bincount(predicted, minlength=features.last_linear.out_features).float() / len(images)


def class_shares_and_fid(
    model: Samples, datamodule: L.LightningDataModule | None, fid_classifier: str | None, samples: int, seed: int
) -> dict[str, float]:
    """`fid` of `samples` seeded samples against the test split, and `class_share_min` / `class_share_max` of the
    classifier's labels of the same samples; empty without a classifier checkpoint."""
    if not fid_classifier:
        return {}
    if datamodule is None or not callable(getattr(datamodule, "batch", None)):
        raise ValueError(f"{type(model).__name__}'s evaluation needs the image DataModule it was trained on")
    real = datamodule.batch("test")[0]
    fid = ClassifierFID(fid_classifier, device=getattr(model, "device", "cpu"))
    fid.set_real(real, cache_key=real_set_key(real))
    fake = draw_samples(model, samples, {}, seed)
    shares = class_shares(ClassifierFeatures.from_checkpoint(fid_classifier), fake)
    return {
        "fid": fid.score(fake)["fid"],
        "class_share_min": float(shares.min()),
        "class_share_max": float(shares.max()),
    }
