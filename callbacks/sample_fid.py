"""The classifier FID of a generative model's samples against the test split, at the end of the test."""

from pathlib import Path
from typing import Any

import lightning as L

from lightning_modules.metrics import ClassifierFID, fid_of_samples, real_set_key
from lightning_modules.protocols import Samples, require


class SampleFID(L.Callback):
    """At the end of `trainer.test`, draws `n` seeded samples from the model (any `Samples` model) for each entry
    of `samplers` and logs their classifier FID (lightning_modules/metrics.py) against the whole test split of the
    DataModule (`datamodule.batch("test")`) as `test/fid_<name>` (`test/fid` without `samplers`). The real
    statistics are cached beside the classifier checkpoint. Every process scores the same samples; the logged
    value is their mean. On the command line:

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
    ) -> None:
        """
        Args:
            classifier: an ImageClassifier checkpoint written by scripts/fit.py (--model lenet5 for the MNIST family),
                whose penultimate features the FID compares.
            n: samples drawn per entry of `samplers`.
            samplers: {name: keyword arguments of the model's `sample`}, one score each; None: `sample(n)` alone.
            seed: seed of the sampling noise, the same for every entry.
            batch_size: samples drawn per call of `sample`.
        """
        if n < 2 or batch_size < 1:
            raise ValueError(f"SampleFID needs n >= 2 samples and batch_size >= 1, got {n} and {batch_size}")
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
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "batch", None)):
            raise ValueError("SampleFID needs a DataModule with batch() (the image DataModules); pass one to test")
        real = datamodule.batch("test")[0]
        fid = ClassifierFID(self.classifier, device=pl_module.device)
        fid.set_real(real, cache_key=real_set_key(real))
        for name, sample_args in self.samplers.items():
            score = fid_of_samples(pl_module, fid, self.n, sample_args, self.seed, self.batch_size)
            pl_module.log(f"test/fid_{name}" if name else "test/fid", score, sync_dist=True)
