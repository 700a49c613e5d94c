"""Evaluations of a learned representation (any model with `embed(x)`, the Embeds contract) on frozen features:
the weighted kNN classifier of Wu et al. (2018) and a linear probe. KNNProbe (callbacks/knn_probe.py) runs them
during training, a model's `evaluate` from a checkpoint."""

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from lightning_modules.protocols import Embeds


@torch.no_grad()
def weighted_knn_scores(
    queries: Tensor,
    bank: Tensor,
    bank_labels: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """The class votes (n, num_classes) of each query's k nearest neighbours in `bank` by cosine similarity s,
    each weighted by exp(s / temperature) (Wu et al. 2018, sec. 3.4; lightly's benchmarks use k = 200, 0.1).
    Queries are scored `chunk_size` at a time, so the similarity matrix is never whole."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    votes = []
    for chunk in F.normalize(queries.float(), dim=1).split(chunk_size):
        similarity, nearest = (chunk @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        scores = torch.zeros(len(chunk), num_classes, device=chunk.device)
        votes.append(scores.scatter_add_(1, bank_labels[nearest], weights))
    return torch.cat(votes)


def knn_accuracy(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], k: int = 200, temperature: float = 0.1
) -> float:
    """Share of the test (features, labels) whose weighted kNN vote among the training ones is their label."""
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    predicted = weighted_knn_scores(test[0], train[0], train[1], num_classes, k, temperature).argmax(dim=1)
    return float((predicted == test[1]).float().mean())


def linear_probe_accuracy(train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], max_iter: int = 1000) -> float:
    """Test accuracy of multinomial logistic regression (scikit-learn's, L-BFGS, standardised inputs) fitted to
    the training (features, labels): what a linear classifier can read off a frozen representation."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    probe.fit(train[0].cpu().numpy(), train[1].cpu().numpy())
    return float(probe.score(test[0].cpu().numpy(), test[1].cpu().numpy()))


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode (BatchNorm reads its running statistics, dropout is off) without gradients;
    every module's mode as it was afterwards."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes.items():
            module.train(mode)


def split_features(
    model: Embeds,
    datamodule,
    split: str,
    n: int | None,
    batch_size: int,
    device: torch.device,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[Tensor, Tensor]:
    """`model.embed` of the first `n` examples of a split (all when None), as a test step sees them (the
    DataModule's `batch`), `batch_size` at a time on `device` inside `context()` (e.g. the run's autocast),
    frozen; float32 features and the labels, on `device`."""
    if not callable(getattr(datamodule, "batch", None)):
        raise ValueError("the kNN and linear-probe evaluation needs a DataModule with batch(), e.g. --data mnist")
    images, labels = datamodule.batch(split, n or len(datamodule.dataset(split)))[:2]
    if labels.ndim != 1:
        raise ValueError(f"the kNN and linear probe need one class label per image; {split} labels are {labels.shape}")
    with frozen(model), context():
        features = [model.embed(chunk.to(device)).flatten(1).float() for chunk in images.split(batch_size)]
    return torch.cat(features), labels.to(device)
