"""The DDPM LightningModule: its loss and samplers wired to a real (tiny) U-Net, the multi-head and MLP variants,
inversion, inpainting, FID at test time, and scripts/fit.py, sample.py and evaluate.py end to end."""

from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import REPO, run_fit
from lightning_modules.blocks.small_nets import LeNet5
from lightning_modules.checkpoint import load_model
from lightning_modules.classifiers.classifier import ImageClassifier
from lightning_modules.diffusion.ddpm import DDPM, parse_sampler
from lightning_modules.masks import grid_mask

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, dropout=0.0)
TINY_FLAGS = [
    "--model.base_channels", "8", "--model.channel_mults", "[1, 2]", "--model.num_res_blocks", "1",
    "--model.attention_levels", "[1]", "--model.num_heads", "2", "--model.timesteps", "50",
    "--model.sample_steps", "5", "--model.inversion_steps", "5",
]  # fmt: skip


def tiny(**overrides) -> DDPM:
    torch.manual_seed(0)
    return DDPM(image_shape=(1, 28, 28), num_classes=10, timesteps=50, **{**TINY, **overrides})


def test_loss_trains_the_denoiser_and_is_deterministic_in_evaluation() -> None:
    model = tiny()
    batch = (torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    first = model.loss(batch, torch.Generator().manual_seed(3))
    assert torch.equal(first, model.loss(batch, torch.Generator().manual_seed(3)))
    first.backward()
    assert all(p.grad is not None for p in model.denoiser.parameters() if p.requires_grad)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_sample_encode_decode_inpaint_shapes_and_ranges(prediction: str) -> None:
    model = tiny(prediction=prediction).eval()
    for sampler, steps in (("ddpm", None), ("ddim", 5)):
        images = model.sample(3, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
        assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    x = torch.rand(2, 1, 28, 28)
    latent = model.encode(x, steps=5)
    assert latent.shape == x.shape and model.decode(latent, steps=5).shape == x.shape
    mask = grid_mask(x.shape)
    filled = model.inpaint(x, mask, steps=5)
    keep = mask.expand_as(x).bool()
    assert torch.allclose(filled[keep], x[keep], atol=1e-6)


def test_same_generator_same_samples() -> None:
    model = tiny().eval()
    a = model.sample(2, steps=5, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = model.sample(2, steps=5, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_multi_head_and_class_conditional_variants() -> None:
    model = tiny(heads=3, head_mix="conv", class_conditional=True)
    assert model.sample(4, steps=3).shape == (4, 1, 28, 28)
    loss = model.loss((torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])))
    assert loss.isfinite()
    with pytest.raises(ValueError, match="num_classes"):
        DDPM(image_shape=(1, 28, 28), num_classes=None, class_conditional=True, **TINY)


def test_points_use_the_mlp_denoiser() -> None:
    model = DDPM(image_shape=None, data_dim=2, timesteps=50)
    assert type(model.denoiser).__name__ == "MLPDenoiser"
    assert model.sample(10, steps=5).shape == (10, 2)
    with pytest.raises(ValueError, match="toy2d"):
        DDPM(image_shape=None, data_dim=None)


def test_sampler_names() -> None:
    assert parse_sampler("ddpm") == ("ddpm", None) and parse_sampler("ddim20") == ("ddim", 20)
    with pytest.raises(ValueError, match="ddimN"):
        DDPM(image_shape=(1, 28, 28), fid_samplers=("euler",), **TINY)


@pytest.fixture
def lenet_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier(LeNet5, image_shape=(1, 28, 28), num_classes=10)
    model.hparams["_class_path"] = "lightning_modules.classifiers.classifier.ImageClassifier"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "lenet5.ckpt")
    return tmp_path / "lenet5.ckpt"


def test_fit_sample_and_evaluate_end_to_end(data_root: Path, tmp_path: Path, lenet_checkpoint: Path) -> None:
    """Two tiny epochs with the FID and the inversion error at test time, then the checkpoint through
    scripts/sample.py (plain, --inpaint, --invert) and scripts/evaluate.py."""
    import subprocess
    import sys

    result = run_fit(
        "--model", "ddpm", "--data.root", str(data_root), "--trainer.max_epochs", "2", *TINY_FLAGS,
        "--model.fid_classifier", str(lenet_checkpoint), "--model.fid_samples", "20",
        "--model.fid_samplers", "[ddim5, ddim3]", "--model.inversion_test_images", "4",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in ("test/loss", "test/fid_ddim5", "test/fid_ddim3", "test/inversion_mse"):
        assert metric in result.stdout, result.stdout[-2000:]
    run = tmp_path / "runs" / "ddpm" / "version_0"
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["grid_epoch000.png", "grid_epoch001.png"]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert isinstance(load_model(ckpt), DDPM)

    def script(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(REPO / "scripts" / name), "--ckpt", str(ckpt), *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    for mode in ([], ["--inpaint", "grid"], ["--invert"]):
        out = script("sample.py", "--n", "4", "--steps", "5", "--out", "s.png", *mode)
        assert out.returncode == 0, out.stderr
        assert (tmp_path / "s.png").stat().st_size > 0
    out = script(
        "evaluate.py", "--fid_classifier", str(lenet_checkpoint), "--samplers", "ddim3", "--data.root", str(data_root)
    )
    assert out.returncode == 0, out.stderr
    assert "fid_ddim3 = " in out.stdout and "inversion_mse = " in out.stdout


@pytest.mark.parametrize("data", [["--data", "mnist"], ["--data", "fashion_mnist"], ["--data", "toy2d"]])
def test_fast_dev_run_with_the_config(data: list[str], data_root: Path, tmp_path: Path) -> None:
    """The registered config as a user runs it (its U-Net size; the MLP for points), one batch of each stage."""
    root = [] if "toy2d" in data else ["--data.root", str(data_root)]
    result = run_fit(
        "--model", "ddpm", *data, *root, "--trainer.fast_dev_run", "true",
        "--model.inversion_test_images", "2", "--model.inversion_steps", "3", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/loss" in result.stdout


def test_latent_walk_through_ddim_inversion() -> None:
    """The inverted noise images are the latents of LatentWalk: slerp endpoints regenerate the two images."""
    from callbacks.latent_walk import LatentWalk

    model = tiny(inversion_steps=4).eval()
    torch.nn.init.normal_(model.denoiser.output[-1].weight, std=0.05)  # not the zero-initialised identity
    images = torch.rand(4, 1, 28, 28)
    walks = LatentWalk(pairs=2, steps=3).walks(model, images)
    assert walks["slerp"].shape == (6, 1, 28, 28)
    regenerated = model.decode(model.encode(images[:2]))
    assert torch.allclose(walks["slerp"][0], regenerated[0], atol=1e-4)
    assert torch.allclose(walks["slerp"][2], regenerated[1], atol=1e-4)
