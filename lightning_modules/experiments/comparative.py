"""Same or different: a siamese network that says whether two images show the same class, trained on pairs drawn
from each batch, and used as a classifier by comparing a query with k labelled examples of every class."""

from collections.abc import Callable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.small_nets import MLP
from lightning_modules.classifiers.classifier import Backbone

QUERY_CHUNK = 500  # queries scored against the whole support set at a time: 500 x 200 pairs of features
SUPPORT_POOL = 4000  # training images searched for the k labelled examples per class


def sample_pairs(
    labels: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """len(labels) pairs of batch indices (first, second) and whether they share a class: the first half pairs a
    uniformly drawn anchor with another example of its class, the second half with one of another class. An
    anchor alone in its class is paired with itself; in a batch of one class the "different" half cannot be, and
    its pairs are same-class (the flags always tell the truth)."""
    n = len(labels)
    same_class = labels[:, None] == labels[None, :]
    itself = torch.eye(n, dtype=torch.bool, device=labels.device)
    others = same_class & ~itself
    lonely = ~others.any(dim=1, keepdim=True)  # tensors, not branches: no host sync
    same_weights = (others | (itself & lonely)).float()
    different = ~same_class
    different_weights = torch.where(different.any(dim=1, keepdim=True), different, same_class).float()
    anchors = torch.randint(n, (n,), generator=generator, device=labels.device)
    half = n // 2
    partners = torch.cat([
        torch.multinomial(same_weights[anchors[:half]], 1, generator=generator),
        torch.multinomial(different_weights[anchors[half:]], 1, generator=generator),
    ]).squeeze(1)  # fmt: skip
    return anchors, partners, labels[anchors] == labels[partners]


def classify_by_comparison(
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    queries: torch.Tensor,
    support: torch.Tensor,
    support_labels: torch.Tensor,
    num_classes: int,
) -> torch.Tensor:
    """The class of each query whose labelled examples it matches best: `score(queries (Q, D), support (N, D))`
    gives (Q, N) match scores, averaged over each class's examples; a class without examples never wins."""
    one_hot = F.one_hot(support_labels, num_classes).to(support.dtype)  # (N, C)
    counts = one_hot.sum(0)
    predictions = []
    for chunk in queries.split(QUERY_CHUNK):
        per_class = score(chunk, support) @ one_hot / counts.clamp(min=1)
        predictions.append(per_class.masked_fill(counts == 0, -torch.inf).argmax(dim=1))
    return torch.cat(predictions)


def first_per_class(labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """Indices of the first k examples of each class (fewer where the labels hold fewer)."""
    chosen = [torch.nonzero(labels == c).flatten()[:k] for c in range(num_classes)]
    return torch.cat(chosen)


class ComparativeNetwork(L.LightningModule):
    """A shared embedding network (any classifier backbone by class path, with `embedding_dim` outputs) and a pair
    head on the symmetric features (|a - b|, a * b), so that score(a, b) = score(b, a). Trained with binary
    cross-entropy on half-same, half-different pairs drawn from each batch (sample_pairs); val and test draw their
    pairs with a generator seeded by the batch index, so the test pair accuracy repeats. evaluate() classifies the
    test split by comparison with k labelled training examples per class."""

    benchmark_metric = "test/pair_acc"

    def __init__(
        self,
        backbone: Backbone = MLP,
        image_shape: tuple[int, int, int] | None = (1, 28, 28),
        num_classes: int | None = 10,
        embedding_dim: int = 64,
        hidden: int = 128,
        shots: Sequence[int] = (1, 5, 20),
        lr: float = 1e-3,
        compile: bool = False,
    ) -> None:
        """
        Args:
            backbone: the embedding network, called as backbone(image_shape, embedding_dim): a class of
                lightning_modules.blocks (MLP, ConvNet, ...) by class path, its options as init_args.
            image_shape: (C, H, W) of the data; set from the DataModule by scripts/fit.py.
            num_classes: number of classes; set from the DataModule by scripts/fit.py.
            embedding_dim: width of the embedding.
            hidden: hidden units of the pair head.
            shots: the k (labelled examples per class) of evaluate()'s classification by comparison.
            lr: AdamW's learning rate.
            compile: run the embedder and the pair head through torch.compile, in place: the state_dict keys stay
                the plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if image_shape is None or num_classes is None:
            raise ValueError(
                "a comparative network needs labelled image data: pick an image DataModule, e.g. --data mnist"
            )
        if not shots or min(shots) < 1:
            raise ValueError(
                f"--model.shots must be positive counts of examples per class, e.g. [1, 5, 20]; got {shots}"
            )
        self.save_hyperparameters()
        self.embedder = backbone(tuple(image_shape), embedding_dim)
        self.pair_head = nn.Sequential(nn.Linear(2 * embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        if compile:
            self.embedder.compile()
            self.pair_head.compile()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedder(x)

    def pair_logit(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit of "same class" for embeddings a, b (..., D): symmetric in a and b by its features."""
        return self.pair_head(torch.cat([(a - b).abs(), a * b], dim=-1)).squeeze(-1)

    def all_pair_scores(self, queries: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """(Q, N) logits of every query against every support embedding."""
        return self.pair_logit(queries[:, None, :], support[None, :, :]).float()

    def pair_loss(self, batch, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary cross-entropy of the pair head on the batch's pairs, and the pairs' accuracy."""
        images, labels = batch
        embeddings = self.embed(images)
        first, second, same = sample_pairs(labels, generator)
        logits = self.pair_logit(embeddings[first], embeddings[second]).float()  # the BCE's log-sigmoid in fp32
        loss = F.binary_cross_entropy_with_logits(logits, same.float())
        return loss, ((logits > 0) == same).float().mean()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, accuracy = self.pair_loss(batch)
        self.log_dict({"train/loss": loss, "train/pair_acc": accuracy}, prog_bar=True)
        return loss

    def seeded(self, batch_idx: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(batch_idx)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, accuracy = self.pair_loss(batch, self.seeded(batch_idx))
        self.log_dict({"val/loss": loss, "val/pair_acc": accuracy}, prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        loss, accuracy = self.pair_loss(batch, self.seeded(batch_idx))
        self.log_dict({"test/loss": loss, "test/pair_acc": accuracy}, sync_dist=True)

    def evaluate(self, datamodule: L.LightningDataModule | None) -> dict[str, float]:
        """Accuracy on the test split as a classifier by comparison with the first k training examples of each
        class, for each k of `shots`: `compare_acc_k{k}`."""
        if datamodule is None:
            return {}
        images, labels = datamodule.batch("test", n=len(datamodule.dataset("test")), device=self.device)
        pool, pool_labels = datamodule.batch("train", n=SUPPORT_POOL, device=self.device)
        queries, pool_embeddings = self.embed(images), self.embed(pool)
        classes = self.hparams.num_classes
        figures = {}
        for k in self.hparams.shots:
            chosen = first_per_class(pool_labels, k, classes)
            predicted = classify_by_comparison(
                self.all_pair_scores, queries, pool_embeddings[chosen], pool_labels[chosen], classes
            )
            figures[f"compare_acc_k{k}"] = float((predicted == labels).float().mean())
        return figures

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
