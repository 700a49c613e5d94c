"""What `predict` writes: every prediction of the run in one file, in the order of the predicted split."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def concatenated(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The per-batch dicts of a predict loop as one dict of tensors concatenated along the first dimension."""
    if not batches or not all(isinstance(batch, dict) for batch in batches):
        raise ValueError("predict_step must return a dict of tensors, one row per example")
    return {key: torch.cat([batch[key].detach().cpu() for batch in batches]) for key in batches[0]}


class PredictionWriter(BasePredictionWriter):
    """At the end of `predict`, saves the predictions (a `predict_step`'s dicts of tensors, concatenated) with
    `torch.save` to `<run folder>/predictions.pt`, the run folder being the logger's version folder (or the
    Trainer's `default_root_dir` without a logger); under DDP each process writes `predictions_rank<R>.pt` with
    the `index` of each row in the split (a DistributedSampler pads and interleaves). Loadable with
    `torch.load(path, weights_only=True)`."""

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")
        self.paths: list[Path] = []

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module, predictions, batch_indices) -> None:
        rows = concatenated(predictions)
        name = "predictions.pt"
        if trainer.world_size > 1 and batch_indices and batch_indices[0]:
            rows["index"] = torch.as_tensor([i for batch in batch_indices[0] for i in batch])
            name = f"predictions_rank{trainer.global_rank}.pt"
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        torch.save(rows, path)
        self.paths.append(path)
