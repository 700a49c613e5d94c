"""LatentWalk: the interpolations' algebra, and the images it writes for a tiny model."""

import math

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from callbacks.latent_walk import LatentWalk, latent_plane, lerp, random_walk, slerp
from datamodules import MNISTDataModule
from lightning_modules.autoencoders.autoencoder import Autoencoder


def test_slerp_endpoints_and_constant_angular_speed():
    z0, z1 = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0])
    t = torch.linspace(0, 1, 5)
    path = slerp(z0, z1, t)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    angles = torch.atan2(path[:, 1], path[:, 0])  # the quarter turn in equal steps, computed independently
    torch.testing.assert_close(angles, t * math.pi / 2)
    torch.testing.assert_close(path.norm(dim=1), torch.full((5,), 2.0))  # on the circle, unlike lerp
    torch.testing.assert_close(slerp(z0, 2 * z0, t), lerp(z0, 2 * z0, t))  # parallel: straight line


def test_lerp_and_random_walk():
    z0, z1 = torch.zeros(3), torch.ones(3)
    torch.testing.assert_close(lerp(z0, z1, torch.tensor([0.0, 0.25, 1.0]))[1], torch.full((3,), 0.25))
    walk = random_walk(z0, 2001, 0.5, torch.Generator().manual_seed(0))
    steps = walk.diff(dim=0)
    assert walk.shape == (2001, 3) and torch.equal(walk[0], z0)
    assert abs(steps.std().item() - 0.5) < 0.02


def test_latent_plane_spans_the_box():
    grid = latent_plane(torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]), 3)
    assert grid.shape == (9, 2)
    torch.testing.assert_close(grid[0], torch.tensor([-1.0, 2.0]))  # top left: low z_1, high z_2
    torch.testing.assert_close(grid[-1], torch.tensor([1.0, -2.0]))


def test_walks_start_and_end_at_the_decoded_encodings():
    torch.manual_seed(0)
    model = Autoencoder(image_shape=(1, 8, 8), hidden_dims=(16,), latent_dim=2).eval()
    images = torch.rand(4, 1, 8, 8)
    walk = LatentWalk(pairs=2, steps=5, plane_side=3)
    decoded = walk.walks(model, images)
    ends = model.decode(model.encode(images))
    for name in ("lerp", "slerp"):
        rows = decoded[name].view(2, 5, 1, 8, 8)
        torch.testing.assert_close(rows[:, 0], ends[[0, 2]])
        torch.testing.assert_close(rows[:, -1], ends[[1, 3]])
    torch.testing.assert_close(decoded["random_walk"].view(2, 5, 1, 8, 8)[:, 0], ends[[0, 2]])
    assert decoded["plane"].shape == (9, 1, 8, 8)


def test_callback_writes_the_grids_to_tensorboard_and_png(data_root, tmp_path):
    torch.manual_seed(0)
    model = Autoencoder(image_shape=(1, 28, 28), hidden_dims=(16,), latent_dim=2)
    data = MNISTDataModule(root=str(data_root), batch_size=8, download=False, fallback=False)
    logger = TensorBoardLogger(tmp_path, name="ae")
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[LatentWalk(every_n_epochs=2, pairs=3, steps=4, plane_side=5)],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    folder = tmp_path / "ae" / "version_0" / "latent_walk"
    written = sorted(p.name for p in folder.glob("*.png"))
    # every_n_epochs=2: only after the second epoch (index 1)
    assert written == [f"{name}_epoch001.png" for name in ("lerp", "plane", "random_walk", "slerp")]
    cell = 28 + 2  # image plus make_grid's padding
    assert Image.open(folder / "lerp_epoch001.png").size == (4 * cell + 2, 3 * cell + 2)
    assert Image.open(folder / "plane_epoch001.png").size == (5 * cell + 2, 5 * cell + 2)
    assert list((tmp_path / "ae" / "version_0").glob("events.out.tfevents.*"))
