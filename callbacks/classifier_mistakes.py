"""Where a classifier goes wrong on the test set: its confusion matrix and its most confident mistakes."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.classification import MulticlassConfusionMatrix

from callbacks.image_batches import output_folder, write_grid


class ClassifierMistakes(L.Callback):
    """At the end of testing, runs the model's forward (logits (B, classes)) over the whole test split as a
    test step sees it (the DataModule's `batch`) and writes to TensorBoard `test/confusion_matrix` (torchmetrics'
    plot: rows true classes, columns predictions) and `test/confident_mistakes`, a grid of the `n` wrong images
    with the highest predicted probability, most confident first, captioned in `test/confident_mistakes_labels`
    (also `<run folder>/mistakes/confident_mistakes_epoch<E>.png`). Runs on global rank 0, with a TensorBoard
    logger only."""

    def __init__(self, n: int = 16, batch_size: int = 1000) -> None:
        """
        Args:
            n: mistakes shown (fewer when the model makes fewer).
            batch_size: test images per forward pass.
        """
        if n < 1 or batch_size < 1:
            raise ValueError(f"ClassifierMistakes needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
        self.n, self.batch_size = n, batch_size

    @torch.no_grad()
    def predict(self, pl_module: L.LightningModule, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes) of the images, in eval mode."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            logits = torch.cat([pl_module(chunk) for chunk in images.split(self.batch_size)])
        finally:
            pl_module.train(was_training)
        if logits.ndim != 2:
            raise ValueError(
                f"ClassifierMistakes: {type(pl_module).__name__}'s forward returned shape {tuple(logits.shape)}; "
                "it needs a classifier whose forward gives logits (batch, classes)"
            )
        return logits.float().softmax(-1)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        folder = output_folder(trainer, "mistakes")
        datamodule = trainer.datamodule
        if not loggers or folder is None or not callable(getattr(datamodule, "batch", None)):
            return
        images, labels = datamodule.batch("test", None, pl_module.device)[:2]
        probabilities = self.predict(pl_module, images)
        confidence, predictions = probabilities.max(-1)
        matrix = MulticlassConfusionMatrix(num_classes=probabilities.shape[1]).to(pl_module.device)
        matrix.update(predictions, labels)
        figure, _ = matrix.plot()
        wrong = (predictions != labels).nonzero().squeeze(1)
        worst = wrong[confidence[wrong].argsort(descending=True)[: self.n]]
        for logger in loggers:
            logger.experiment.add_figure("test/confusion_matrix", figure, global_step=trainer.global_step)
        if len(worst):
            write_grid(trainer, folder, "test/confident_mistakes", images[worst], nrow=min(len(worst), 8))
            captions = [
                f"{rank}. predicted {int(predictions[i])} ({float(confidence[i]):.3f}), true {int(labels[i])}"
                for rank, i in enumerate(worst.tolist(), 1)
            ]
            for logger in loggers:
                logger.experiment.add_text("test/confident_mistakes_labels", "  \n".join(captions), trainer.global_step)
