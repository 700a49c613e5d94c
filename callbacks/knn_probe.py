"""Online evaluation of a learned representation (any model with `embed(x)`, the Embeds contract): a weighted
kNN classifier of the test set against the training set every few epochs, and a linear probe at the end (the
evaluations themselves are in lightning_modules/representation.py)."""

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure

from callbacks.image_batches import is_due, output_folder
from lightning_modules.protocols import Embeds, require
from lightning_modules.representation import knn_accuracy, linear_probe_accuracy, split_features


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
