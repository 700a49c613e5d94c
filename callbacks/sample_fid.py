"""The classifier FID of a generative model's samples against the test split, at the end of the test."""

from pathlib import Path
from typing import Any

import lightning as L

from callbacks.image_batches import is_due
from lightning_modules.metrics import ClassifierFID, fid_of_samples, real_set_key
from lightning_modules.protocols import Samples, require


class SampleFID(L.Callback):
    """At the end of `trainer.test`, draws `n` seeded samples from the model (any `Samples` model) for each entry
    of `samplers` and logs their classifier FID (lightning_modules/metrics.py) against the whole test split of the
    DataModule (`datamodule.batch("test")`) as `test/fid_<name>` (`test/fid` without `samplers`). The real
    statistics are cached beside the classifier checkpoint. Every process scores the same samples; the logged
    value is their mean. With `every_n_epochs`, the same scores are logged during training as well, as
    `train/fid_<name>` at the end of every this many epochs (and of the last). On the command line:

        --trainer.callbacks+=callbacks.sample_fid.SampleFID --trainer.callbacks.classifier CKPT \\
        --trainer.callbacks.samplers '{ddim50: {sampler: ddim, steps: 50, eta: 0.0}, ddpm: {sampler: ddpm}}'
    """

    def __init__(
        self,
        classifier: str,
        n: int = 1000,
        samplers: dict[str, dict[str, Any]] | None = None,
        seed: int = 0,
        batch_size: int = 500,
        every_n_epochs: int | None = None,
    ) -> None:
        """
        Args:
            classifier: an ImageClassifier checkpoint written by scripts/fit.py (--model lenet5 for the MNIST family),
                whose penultimate features the FID compares.
            n: samples drawn per entry of `samplers`.
            samplers: {name: keyword arguments of the model's `sample`}, one score each; None: `sample(n)` alone.
            seed: seed of the sampling noise, the same for every entry.
            batch_size: samples drawn per call of `sample`.
            every_n_epochs: also score at the end of every this many training epochs; None: at the test only.
        """
        if n < 2 or batch_size < 1 or (every_n_epochs is not None and every_n_epochs < 1):
            raise ValueError(
                f"SampleFID needs n >= 2 samples, batch_size >= 1 and every_n_epochs >= 1 or null, "
                f"got {n}, {batch_size} and {every_n_epochs}"
            )
        self.every_n_epochs = every_n_epochs
        self.classifier, self.n, self.seed, self.batch_size = classifier, n, seed, batch_size
        self.samplers = dict(samplers) if samplers else {"": {}}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, Samples, "SampleFID")
        if not Path(self.classifier).is_file():
            raise FileNotFoundError(
                f"SampleFID classifier {self.classifier} not found; train one with scripts/fit.py --model lenet5 "
                "and pass its last.ckpt as --trainer.callbacks.classifier"
            )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.score(trainer, pl_module, "test")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs is not None and is_due(trainer, self.every_n_epochs):
            was_training = pl_module.training
            pl_module.eval()
            try:
                self.score(trainer, pl_module, "train")
            finally:
                pl_module.train(was_training)

    def score(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Log `<stage>/fid_<name>` for each entry of `samplers`."""
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "batch", None)):
            raise ValueError("SampleFID needs a DataModule with batch() (the image DataModules); pass one to test")
        real = datamodule.batch("test")[0]
        fid = ClassifierFID(self.classifier, device=pl_module.device)
        fid.set_real(real, cache_key=real_set_key(real))
        for name, sample_args in self.samplers.items():
            score = fid_of_samples(pl_module, fid, self.n, sample_args, self.seed, self.batch_size)
            pl_module.log(f"{stage}/fid_{name}" if name else f"{stage}/fid", score, sync_dist=True)
