"""The checks every run carries: a non-finite loss stops the run, naming its step."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks import FiniteLossCheck, NonFiniteLossError


class Blows(L.LightningModule):
    """A loss that turns NaN from step `bad_step` on."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = (self.weight * batch[0]).mean()
        return loss * float("nan") if self.global_step >= self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(64, 1)), batch_size=1)


def fit(model: L.LightningModule, every: int) -> None:
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[FiniteLossCheck(check_every_n_steps=every)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)


@pytest.mark.parametrize("every", [1, 25])
def test_nan_loss_stops_the_run_naming_the_first_bad_step(every):
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite at step 7 \(epoch 0\)"):
        fit(Blows(bad_step=7), every)


def test_finite_loss_trains_to_the_end():
    fit(Blows(bad_step=10**9), every=1)
