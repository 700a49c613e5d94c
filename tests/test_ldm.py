"""The latent diffusion model: its latent scale, the frozen VQ-VAE (left as it was by training, outside the
optimiser, in eval mode), a checkpoint that loads without the VQ-VAE's file, samples through the Samples contract,
the one-line errors of a missing or wrong --model.vqvae_checkpoint, and scripts/fit.py end to end."""

import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from conftest import one_error_line
from datamodules.images import MNISTDataModule
from lightning_modules.blocks.unet import UNet
from lightning_modules.checkpoint import load_model
from lightning_modules.protocols import Encodes, Inpaints, Samples, missing
from lightning_modules.vq.ldm import LatentDiffusion

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2)
TINY_FLAGS = [
    "--model.denoiser.base_channels", "8", "--model.denoiser.num_res_blocks", "1", "--model.denoiser.num_heads", "2",
    "--model.timesteps", "50", "--model.sample_steps", "2", "--model.inversion_steps", "1",
]  # fmt: skip


def tiny(vqvae_checkpoint: Path, **overrides) -> LatentDiffusion:
    torch.manual_seed(0)
    return LatentDiffusion(str(vqvae_checkpoint), partial(UNet, **TINY), timesteps=50, sample_steps=2, **overrides)


def fit(model: LatentDiffusion, data_root: Path, steps: int, callbacks: list | None = None) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps, limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )  # fmt: skip
    trainer.fit(model, datamodule=MNISTDataModule(root=str(data_root), batch_size=16))
    return trainer


@dataclass
class Trained:
    model: LatentDiffusion
    trainer: L.Trainer
    before: dict[str, torch.Tensor]  # the autoencoder's and the denoiser's weights, and a reconstruction, before


@pytest.fixture(scope="module")
def trained(vqvae_checkpoint, module_data_root) -> Trained:
    """A tiny LDM after 4 steps with an EMA of its weights from the first step and validation (which swaps the
    average in) every 2 steps, and what its networks were before."""
    model = tiny(vqvae_checkpoint)
    autoencoder = model.autoencoder
    with torch.no_grad():
        before = {"reconstruction": autoencoder.decode(autoencoder.encode(RECONSTRUCTED))}
    before |= {f"autoencoder.{k}": v.clone() for k, v in autoencoder.state_dict().items()}
    before |= {f"denoiser.{k}": v.clone() for k, v in model.denoiser.state_dict().items()}
    trainer = fit(model, module_data_root, steps=4, callbacks=[EMAWeightAveraging(decay=0.5)])
    return Trained(model, trainer, before)


RECONSTRUCTED = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_the_latent_scale_makes_the_training_latents_variance_one(trained, module_data_root) -> None:
    datamodule = MNISTDataModule(root=str(module_data_root), batch_size=16)
    images = datamodule.batch("train", n=len(datamodule.dataset("train")))[0]
    scaled = trained.model.latents(images).double() * trained.model.latent_scale
    # The scale is 1 / std measured in float64 over these float32 latents and rounded to a Python float: the
    # variance is 1 to float64's rounding of a mean over ~85k elements (~1e-12); 1e-9 leaves room, and the
    # latents of another split (or of the first batch only) would miss it by percents.
    assert scaled.var(correction=0).item() == pytest.approx(1.0, abs=1e-9)


def test_training_leaves_the_frozen_autoencoder_as_it_was(trained) -> None:
    model, before = trained.model, trained.before
    autoencoder = model.autoencoder
    with torch.no_grad():
        assert torch.equal(autoencoder.decode(autoencoder.encode(RECONSTRUCTED)), before["reconstruction"])
    assert all(torch.equal(before[f"autoencoder.{k}"], v) for k, v in autoencoder.state_dict().items())
    assert not autoencoder.training and not any(p.requires_grad for p in autoencoder.parameters())
    optimised = {id(p) for group in trained.trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in autoencoder.parameters()}
    # It did train: the denoiser moved.
    assert any(not torch.equal(before[f"denoiser.{k}"], v) for k, v in model.denoiser.state_dict().items())


def test_a_trained_model_loads_without_the_vqvae_file(vqvae_checkpoint, data_root, tmp_path, fit_in_process) -> None:
    copy = tmp_path / "vqvae.ckpt"
    shutil.copy(vqvae_checkpoint, copy)
    result = fit_in_process(
        "--model", "ldm", "--data.root", str(data_root), "--data.batch_size", "16", "--model.vqvae_checkpoint",
        str(copy), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches",
        "1", "--trainer.callbacks", "[]", *TINY_FLAGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    vqvae = load_model(copy)
    copy.unlink()
    model = load_model(tmp_path / "runs" / "ldm" / "version_0" / "checkpoints" / "last.ckpt")
    assert model.latent_scale is not None and model.hparams.vqvae_hparams["num_codes"] == 128
    assert all(torch.equal(vqvae.state_dict()[k], v) for k, v in model.autoencoder.state_dict().items())
    assert not missing(model, Samples) and not missing(model, Encodes) and missing(model, Inpaints)
    for quantize in (True, False):
        model.hparams.quantize_samples = quantize
        samples = model.sample(3, generator=torch.Generator().manual_seed(0))
        assert samples.shape == (3, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1


def test_fast_dev_run(vqvae_checkpoint, data_root, fit_in_process) -> None:
    result = fit_in_process(
        "--model", "ldm", "--trainer.fast_dev_run", "true", "--data.root", str(data_root), "--data.batch_size", "16",
        "--model.vqvae_checkpoint", str(vqvae_checkpoint), *TINY_FLAGS,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/loss = " in result.stdout and "test/inversion_mse = " in result.stdout


def test_a_missing_or_wrong_vqvae_checkpoint_is_one_line(data_root, lenet_checkpoint, tmp_path, fit_in_process) -> None:
    run = partial(fit_in_process, "--model", "ldm", "--trainer.fast_dev_run", "true", "--data.root", str(data_root))
    assert one_error_line(run()).endswith(
        "pass --model.vqvae_checkpoint PATH, the last.ckpt of python scripts/fit.py --model vqvae"
    )
    absent = one_error_line(run("--model.vqvae_checkpoint", str(tmp_path / "nothing.ckpt")))
    assert "--model.vqvae_checkpoint" in absent and "not found" in absent and "--model vqvae" in absent
    wrong = one_error_line(run("--model.vqvae_checkpoint", str(lenet_checkpoint)))
    assert "holds a ImageClassifier, not a VQ-VAE" in wrong
