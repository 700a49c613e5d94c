"""SampleGrid: what it writes for image and 2-D samplers, its fixed noise, and its errors."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import nn

from callbacks.sample_grid import SampleGrid
from datamodules.toy2d import Toy2DDataModule

pytestmark = [
    pytest.mark.filterwarnings("ignore:You passed in a `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:The number of training batches"),
]


class NoiseSampler(L.LightningModule):
    """Trains one number; `sample(n)` is pure noise of the given shape (images in [0, 1], or 2-D points), so
    equal noise gives equal pictures however training went. Records a random draw per training step."""

    def __init__(self, shape: tuple[int, ...] = (1, 8, 8)) -> None:
        super().__init__()
        self.shape = shape
        self.weight = nn.Parameter(torch.zeros(1))
        self.draws: list[float] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.draws.append(torch.rand(1).item())
        return (self.weight - batch[0].mean()).square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def sample(self, n: int, scale: float = 1.0) -> torch.Tensor:
        if len(self.shape) == 1:
            return scale * torch.randn(n, *self.shape, device=self.device)
        return torch.rand(n, *self.shape, device=self.device)


class NoSample(NoiseSampler):
    sample = None


def fit(model: L.LightningModule, tmp_path, callbacks: list, logger: bool = True) -> None:
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=2, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks,
        logger=TensorBoardLogger(tmp_path, name="run") if logger else False,
    )  # fmt: skip
    trainer.fit(model, datamodule=Toy2DDataModule(n_train=64, n_val=16, n_test=16, batch_size=16))


def test_image_grids_from_the_same_noise_each_time(tmp_path):
    torch.manual_seed(0)
    plain = NoiseSampler()
    fit(plain, tmp_path / "plain", [])
    torch.manual_seed(0)
    model = NoiseSampler()
    fit(model, tmp_path, [SampleGrid(every_n_epochs=2, n=6, seed=3)])
    folder = tmp_path / "run" / "version_0" / "samples"
    # Epoch 1 is the second (every 2), epoch 2 the last.
    assert sorted(p.name for p in folder.iterdir()) == ["grid_epoch001.png", "grid_epoch002.png"]
    grids = [np.asarray(Image.open(folder / name)) for name in ("grid_epoch001.png", "grid_epoch002.png")]
    assert grids[0].shape[:2] == (2 * 10 + 2, 3 * 10 + 2)  # 6 images of 8x8 in 3 columns, padding 2
    np.testing.assert_array_equal(grids[0], grids[1])
    assert model.draws == plain.draws  # sampling left the training's random stream alone


def test_seed_decides_the_noise():
    model = NoiseSampler()
    torch.testing.assert_close(SampleGrid(n=4, seed=1).draw(model), SampleGrid(n=4, seed=1).draw(model))
    assert not torch.equal(SampleGrid(n=4, seed=1).draw(model), SampleGrid(n=4, seed=2).draw(model))


def test_points_become_a_scatter_plot_over_the_data(tmp_path):
    grid = SampleGrid(every_n_epochs=5, n=50, sample_args={"scale": 2.0})
    fit(NoiseSampler(shape=(2,)), tmp_path, [grid])
    folder = tmp_path / "run" / "version_0" / "samples"
    assert [p.name for p in folder.iterdir()] == ["scatter_epoch002.png"]
    assert grid._data.shape == (64, 2)  # the whole (tiny) training set, under the 2,000-point cap
    assert Image.open(folder / "scatter_epoch002.png").size == (600, 600)


def test_without_a_logger_nothing_is_written(tmp_path):
    fit(NoiseSampler(), tmp_path, [SampleGrid()], logger=False)
    assert not any(tmp_path.rglob("*.png"))


def test_a_model_without_sample_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"NoSample cannot be used for SampleGrid: it has no sample\(\)"):
        fit(NoSample(), tmp_path, [SampleGrid()])


def test_other_sample_shapes_are_refused(tmp_path):
    trainer = L.Trainer(max_epochs=1, logger=TensorBoardLogger(tmp_path, name="run"), enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"NoiseSampler.sample returned shape \(4, 3\)"):
        SampleGrid(n=4).on_train_epoch_end(trainer, NoiseSampler(shape=(3,)))
