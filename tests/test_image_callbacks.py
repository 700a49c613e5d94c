"""ReconstructionGrid and LatentEmbedding: what they draw, for tiny models."""

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from callbacks.latent_embedding import LatentEmbedding, embed_2d_or_3d
from callbacks.reconstruction_grid import ReconstructionGrid
from datamodules import MNISTDataModule
from lightning_modules.autoencoders.autoencoder import Autoencoder, DenoisingAutoencoder


def test_rows_are_inputs_then_reconstructions():
    model = Autoencoder(image_shape=(1, 8, 8), hidden_dims=(16,), latent_dim=2).eval()
    images = torch.rand(3, 1, 8, 8)
    rows = ReconstructionGrid(n=3).rows(model, images)
    torch.testing.assert_close(rows, torch.cat([images, model.decode(model.encode(images))]))


def test_denoising_rows_show_the_corrupted_inputs_and_their_reconstructions():
    model = DenoisingAutoencoder(image_shape=(1, 8, 8), network="mlp", hidden_dims=(16,), latent_dim=2).eval()
    model.corrupt = lambda x: x.flip(-1)  # a corruption without noise: the test knows what was shown
    images = torch.rand(3, 1, 8, 8)
    rows = ReconstructionGrid(n=3).rows(model, images)
    noisy = images.flip(-1)
    torch.testing.assert_close(rows, torch.cat([images, noisy, model.decode(model.encode(noisy))]))


def test_embedding_keeps_small_latents_and_reduces_large_ones_keeping_clusters_apart():
    codes = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    assert embed_2d_or_3d(codes) is codes
    # Two clusters 10 standard deviations apart in 8-D: in the 2-D embedding every point's nearest
    # neighbour must still be in its own cluster.
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 20)
    points = embed_2d_or_3d(rng.normal(size=(40, 8)) + 10 * labels[:, None] / np.sqrt(8))
    assert points.shape == (40, 2)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.diag(np.full(40, np.inf))
    assert (labels[distances.argmin(1)] == labels).all()


def test_callbacks_write_grid_and_embedding(data_root, tmp_path):
    torch.manual_seed(0)
    model = Autoencoder(image_shape=(1, 28, 28), network="conv", conv_channels=(4, 8), latent_dim=5)
    data = MNISTDataModule(root=str(data_root), batch_size=8, download=False, fallback=False)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=1, logger=TensorBoardLogger(tmp_path, name="ae"),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ReconstructionGrid(n=5), LatentEmbedding(max_points=30)],
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    run = tmp_path / "ae" / "version_0"
    cell = 28 + 2
    assert Image.open(run / "reconstructions" / "grid_epoch000.png").size == (5 * cell + 2, 2 * cell + 2)
    assert Image.open(run / "latent_embedding" / "test.png").size == (600, 600)
