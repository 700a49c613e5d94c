"""What the diffusion and score models share as LightningModules: a `loss(batch, generator)` drawn afresh in
training and from fixed noise in evaluation, its logging, and the figures their `evaluate` prints."""

from collections.abc import Callable

import lightning as L
import torch

from lightning_modules.metrics import ClassifierFID, draw_samples, real_set_key, reconstruction_mse


class DenoisingModel(L.LightningModule):
    """Base of DDPM, EDM and NCSN: each defines `loss(batch, generator=None)`, the mean of its own objective over
    a batch; this class trains on it and logs it as `train/loss`, `val/loss` and `test/loss`."""

    throughput_unit = "samples"
    benchmark_metric = "test/loss"  # the sample FID, when the SampleFID callback is on, comes before it

    def loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def count_throughput(self, batch) -> int:
        return len(batch[0])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def fixed_generator(self, batch_idx: int) -> torch.Generator:
        """Evaluation draws its noise levels and noise from the batch index: the same every epoch and run."""
        return torch.Generator(device=self.device).manual_seed(batch_idx)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.loss(batch, self.fixed_generator(batch_idx)), prog_bar=True, sync_dist=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self.log("test/loss", self.loss(batch, self.fixed_generator(batch_idx)), sync_dist=True)


def sampler_scores(
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None,
    sample_args: dict[str, dict],
    fid_classifier: str | None,
    samples: int,
    seed: int,
    inversion: bool = True,
    on_samples: Callable[[str, torch.Tensor], dict[str, float]] | None = None,
) -> dict[str, float]:
    """The classifier FID of `samples` samples per sampler (`sample_args`: name -> model.sample arguments) against
    the test split of `datamodule`, and (with `inversion`) the inversion error (mean squared, in [0, 1] pixel units)
    of its first 64 test images through the model's encode/decode; `on_samples(name, samples)` adds figures of each
    sampler's samples. Without a classifier checkpoint the FID (and on_samples) is left out."""
    if datamodule is None or not callable(getattr(datamodule, "batch", None)):
        raise ValueError(
            f"{type(model).__name__}'s evaluation needs the image DataModule it was trained on; pass the checkpoint's"
        )
    real = datamodule.batch("test")[0]
    scores = {}
    if fid_classifier:
        fid = ClassifierFID(fid_classifier, device=model.device)
        fid.set_real(real, cache_key=real_set_key(real))
        for spec, args in sample_args.items():
            drawn = draw_samples(model, samples, args, seed)
            scores[f"fid_{spec}"] = fid.score(drawn)["fid"]
            scores.update(on_samples(spec, drawn) if on_samples else {})
    if inversion:
        scores["inversion_mse"] = reconstruction_mse(model, real[:64].to(model.device))
    return scores
