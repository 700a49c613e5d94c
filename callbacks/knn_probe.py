"""Online evaluation of a learned representation (any model with `embed(x)`, the Embeds contract): a weighted
kNN classifier of the test set against the training set every few epochs, and a linear probe at the end."""

import contextlib
from collections.abc import Callable, Iterator

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from callbacks.image_batches import is_due, output_folder
from lightning_modules.protocols import Embeds, require


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


class KNNProbe(L.Callback):
    """Every `every_n_epochs` training epochs (and after the last), the weighted kNN accuracy of the test set
    against the training set in the model's `embed` space, logged as `knn/acc`; at the end of testing the same
    and a linear probe (logistic regression on the frozen, pre-computed features), `knn/acc` and `probe/acc`.
    The history is drawn against the epochs in `<run folder>/knn_probe/knn_vs_epoch.png`. Each process computes
    the same figures from the whole splits."""

    def __init__(
        self,
        every_n_epochs: int = 5,
        k: int = 200,
        temperature: float = 0.1,
        linear_probe: bool = True,
        max_train: int | None = None,
        batch_size: int = 512,
    ) -> None:
        """
        Args:
            every_n_epochs: kNN accuracy after every this many training epochs (and after the last one).
            k: neighbours that vote.
            temperature: the votes' weights are exp(cosine similarity / temperature).
            linear_probe: also fit the linear probe at the end of testing.
            max_train: the first this many training examples form the bank (and the probe's training set);
                None: all of them.
            batch_size: images embedded per forward pass.
        """
        if every_n_epochs < 1 or k < 1 or temperature <= 0 or batch_size < 1 or (max_train or 1) < 1:
            raise ValueError(
                "KNNProbe needs every_n_epochs >= 1, k >= 1, temperature > 0, batch_size >= 1 and max_train >= 1 "
                f"(or None), got {every_n_epochs}, {k}, {temperature}, {batch_size}, {max_train}"
            )
        self.every_n_epochs, self.k, self.temperature = every_n_epochs, k, temperature
        self.linear_probe, self.max_train, self.batch_size = linear_probe, max_train, batch_size
        self.history: list[tuple[int, float]] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, Embeds, "the kNN and linear-probe evaluation")

    def features(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[tuple, tuple]:
        # The run's precision, autocast included.
        options = (self.batch_size, pl_module.device, trainer.precision_plugin.forward_context)
        return (
            split_features(pl_module, trainer.datamodule, "train", self.max_train, *options),
            split_features(pl_module, trainer.datamodule, "test", None, *options),
        )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not is_due(trainer, self.every_n_epochs):
            return
        accuracy = knn_accuracy(*self.features(trainer, pl_module), self.k, self.temperature)
        self.history.append((trainer.current_epoch + 1, accuracy))
        pl_module.log("knn/acc", accuracy, sync_dist=True)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        train, test = self.features(trainer, pl_module)
        pl_module.log("knn/acc", knn_accuracy(train, test, self.k, self.temperature), sync_dist=True)
        if self.linear_probe:
            pl_module.log("probe/acc", linear_probe_accuracy(train, test), sync_dist=True)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = output_folder(trainer, "knn_probe")
        if folder is None or not self.history:
            return
        figure = Figure(figsize=(6, 4), dpi=100)
        axes = figure.add_subplot()
        epochs, accuracies = zip(*self.history, strict=True)
        axes.plot(epochs, [100 * a for a in accuracies], marker="o")
        axes.set(xlabel="epoch", ylabel="test kNN accuracy (%)", title=f"{type(pl_module).__name__}: k = {self.k}")
        axes.grid(alpha=0.3)
        figure.savefig(folder / "knn_vs_epoch.png", bbox_inches="tight")
