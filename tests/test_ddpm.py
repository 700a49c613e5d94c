"""The DDPM LightningModule: its loss and samplers wired to a real (tiny) U-Net, the multi-head and MLP variants,
inversion, inpainting, the FID and inversion callbacks at test time, evaluate(), the compiled model's checkpoint,
and scripts/fit.py and sample.py end to end."""

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

import fit
from lightning_modules.blocks.mlp_denoiser import MLPDenoiser
from lightning_modules.blocks.unet import MultiHeadUNet, UNet
from lightning_modules.checkpoint import load_datamodule, load_model
from lightning_modules.diffusion.ddpm import DDPM, parse_sampler
from lightning_modules.masks import grid_mask

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2, dropout=0.0)
TINY_FLAGS = [
    "--model.denoiser.base_channels", "8", "--model.denoiser.channel_mults", "[1, 2]",
    "--model.denoiser.attention_levels", "[1]", "--model.denoiser.num_heads", "2", "--model.timesteps", "50",
    "--model.sample_steps", "5", "--model.inversion_steps", "5",
]  # fmt: skip
MLP_FLAG = ["--model.denoiser", "lightning_modules.blocks.mlp_denoiser.MLPDenoiser"]


def tiny(network: type = UNet, network_args: dict | None = None, **overrides) -> DDPM:
    torch.manual_seed(0)
    denoiser = partial(network, **TINY, **(network_args or {}))
    return DDPM(denoiser=denoiser, image_shape=(1, 28, 28), num_classes=10, timesteps=50, **overrides)


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
        assert images.shape == (3, 1, 28, 28)
    x = torch.rand(2, 1, 28, 28)
    latent = model.encode(x, steps=5)
    assert latent.shape == x.shape and model.decode(latent, steps=5).shape == x.shape
    mask = grid_mask(x.shape)
    filled = model.inpaint(x, mask, steps=5)
    keep = mask.expand_as(x).bool()
    assert torch.allclose(filled[keep], x[keep], atol=1e-6)


def test_the_untrained_network_inverts_in_closed_form() -> None:
    """The U-Net starts with a zero output conv, so it predicts eps = 0; DDIM (eq. 12, eta 0) then only rescales,
    x_t' = sqrt(alpha-bar_t' / alpha-bar_t) x_t, and the inversion of x (mapped to [-1, 1]) is
    sqrt(alpha-bar_{T-1}) (2x - 1), whatever the steps. Float32 rounding of a few multiplications: rtol 1e-5."""
    model = tiny(inversion_refine=0).eval()
    x = torch.rand(2, 1, 28, 28)
    alpha_bar_last = model.schedule.alpha_bar[-1]
    torch.testing.assert_close(model.encode(x, steps=5), alpha_bar_last.sqrt() * (2 * x - 1), rtol=1e-5, atol=1e-6)
    z = torch.randn(2, 1, 28, 28) * 5e-4  # small enough that the decoded image stays inside [-1, 1]
    torch.testing.assert_close(model.decode(z, steps=5), (z / alpha_bar_last.sqrt() + 1) / 2, rtol=1e-5, atol=1e-6)


def test_same_generator_same_samples() -> None:
    model = tiny().eval()
    a = model.sample(2, steps=5, eta=1.0, generator=torch.Generator().manual_seed(5))
    b = model.sample(2, steps=5, eta=1.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_multi_head_and_class_conditional_variants() -> None:
    model = tiny(MultiHeadUNet, {"heads": 3, "mix": "conv"}, class_conditional=True)
    assert isinstance(model.denoiser, MultiHeadUNet) and len(model.denoiser.heads) == 3
    assert model.denoiser.heads[0].embedding.num_classes == 10  # the model passed the data's classes
    assert model.sample(4, steps=3).shape == (4, 1, 28, 28)
    loss = model.loss((torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])))
    assert loss.isfinite()
    with pytest.raises(ValueError, match="num_classes"):
        DDPM(image_shape=(1, 28, 28), num_classes=None, class_conditional=True)


def test_points_take_the_mlp_denoiser_and_the_unet_refuses_them() -> None:
    model = DDPM(image_shape=None, data_dim=2, timesteps=50)  # no denoiser chosen: the MLP for points
    assert isinstance(model.denoiser, MLPDenoiser)
    assert model.sample(10, steps=5).shape == (10, 2)
    chosen = DDPM(denoiser=partial(MLPDenoiser, hidden=16), image_shape=None, data_dim=3, timesteps=50)
    assert chosen.denoiser.input.in_features == 3 and chosen.denoiser.input.out_features == 16
    with pytest.raises(ValueError, match=r"--model.denoiser lightning_modules\.blocks\.mlp_denoiser\.MLPDenoiser"):
        DDPM(denoiser=UNet, image_shape=None, data_dim=2)
    with pytest.raises(ValueError, match="data_dim"):
        DDPM(image_shape=None, data_dim=None)


def test_sampler_names() -> None:
    assert parse_sampler("ddpm") == {"sampler": "ddpm"}
    assert parse_sampler("ddim20") == {"sampler": "ddim", "steps": 20, "eta": 0.0}
    with pytest.raises(ValueError, match="ddimN"):
        parse_sampler("euler")


def test_fit_sample_and_evaluate_end_to_end(
    data_root: Path, tmp_path: Path, lenet_checkpoint: Path, fit_in_process, script_in_process
) -> None:
    """Two tiny epochs with the FID (SampleFID) and the inversion error (InversionError) at test time, then the
    checkpoint through scripts/sample.py (plain, --inpaint, --invert) and DDPM.evaluate on the DataModule that
    the checkpoint records."""
    result = fit_in_process(
        "--model", "ddpm", "--data.root", str(data_root), "--trainer.max_epochs", "2", *TINY_FLAGS,
        "--trainer.callbacks+=callbacks.sample_fid.SampleFID", "--trainer.callbacks.classifier", str(lenet_checkpoint),
        "--trainer.callbacks.n", "20",
        "--trainer.callbacks.samplers", "{ddim5: {sampler: ddim, steps: 5}, ddim3: {sampler: ddim, steps: 3}}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in ("test/loss", "test/fid_ddim5", "test/fid_ddim3", "test/inversion_mse"):
        assert metric in result.stdout, result.stdout[-2000:]
    run = tmp_path / "runs" / "ddpm" / "version_0"
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["grid_epoch000.png", "grid_epoch001.png"]
    ckpt = run / "checkpoints" / "last.ckpt"
    model = load_model(ckpt)
    assert isinstance(model, DDPM) and isinstance(model.denoiser, UNet)
    assert model.denoiser.base_channels == 8  # the nested option came back from the checkpoint
    for index, mode in enumerate(([], ["--inpaint", "grid"], ["--invert"])):
        out = tmp_path / f"sample{index}.png"
        sampled = script_in_process(
            "sample", "--ckpt", str(ckpt), "--n", "4", "--steps", "5", "--out", str(out), "--data.root",
            str(data_root), *mode,
        )  # fmt: skip
        assert sampled.returncode == 0, sampled.stderr[-3000:]
        assert out.stat().st_size > 0
    figures = model.evaluate(
        load_datamodule(ckpt, str(data_root)), samplers="ddim3", fid_classifier=str(lenet_checkpoint), samples=20
    )
    assert sorted(figures) == ["fid_ddim3", "inversion_mse"]
    assert all(value >= 0 for value in figures.values())


# Fashion-MNIST takes MNIST's path (its DataModule subclasses MNIST's, the same image shape): one of them is enough.
@pytest.mark.parametrize("data", [["--data", "mnist"], ["--data", "toy2d", *MLP_FLAG]])
def test_fast_dev_run_with_the_config(data: list[str], data_root: Path, fit_in_process) -> None:
    """The registered config as a user runs it (its U-Net size; the MLP for points), one batch of each stage."""
    root = [] if "toy2d" in data else ["--data.root", str(data_root)]
    result = fit_in_process(
        "--model", "ddpm", *data, *root, "--trainer.fast_dev_run", "true", "--model.inversion_steps", "3"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/loss" in result.stdout and "test/inversion_mse" in result.stdout


def test_points_with_the_configs_unet_are_one_line_naming_the_flag(fit_in_process) -> None:
    result = fit_in_process("--model", "ddpm", "--data", "toy2d", "--trainer.fast_dev_run", "true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "fit.py: error: --model.denoiser: UNet models images, but the data are 2-D points; "
        "pass --model.denoiser lightning_modules.blocks.mlp_denoiser.MLPDenoiser"
    )


def compiled_checkpoint(data_root: Path, folder: Path) -> tuple[DDPM, Path]:
    """A DDPM built as fit.py builds it (LightningCLI) with --model.compile true, saved as fit.py saves it."""
    _, args = fit.translate(["--model", "ddpm", "--data.root", str(data_root), *TINY_FLAGS, "--model.compile", "true",
                             "--trainer.logger", "false", "--trainer.callbacks", "[]"])  # fmt: skip
    model = fit.ZooCLI("ddpm", args).model
    torch.nn.init.normal_(model.denoiser.output[-1].weight, std=0.05)  # not the zero-initialised output
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(folder / "compiled.ckpt")
    return model, folder / "compiled.ckpt"


INPUTS = (torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 40]))


def test_compiled_model_checkpoint_has_plain_keys_and_loads(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    """--model.compile true compiles the denoiser in place: the checkpoint has the plain module's keys and
    load_model gives back the same network, compiled again."""
    monkeypatch.chdir(tmp_path)
    model, ckpt = compiled_checkpoint(data_root, tmp_path)
    keys = torch.load(ckpt, weights_only=True)["state_dict"]
    assert keys and not [key for key in keys if "_orig_mod" in key]
    loaded = load_model(ckpt)
    assert loaded.hparams.compile and loaded.denoiser._compiled_call_impl is not None
    with torch.no_grad():  # .forward skips the compiled call: the same weights and operations give the same bits
        assert torch.equal(loaded.denoiser.forward(*INPUTS), model.denoiser.forward(*INPUTS))


@pytest.mark.slow
def test_compiled_outputs_match_the_loaded_model(data_root: Path, tmp_path: Path, monkeypatch) -> None:
    """The compiled network (torch.compile on CPU takes minutes on a busy machine) against the eager network
    loaded from its checkpoint."""
    monkeypatch.chdir(tmp_path)
    model, ckpt = compiled_checkpoint(data_root, tmp_path)
    with torch.no_grad():
        compiled = model.denoiser(*INPUTS)
        eager = load_model(ckpt).denoiser.forward(*INPUTS)
    # The compiled kernels fuse and reorder float32 operations: agreement to the float32 rounding of sums of a
    # few hundred products (~1e-7 relative each), well inside rtol 1e-4 / atol 1e-5 on outputs of order 1.
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def test_latent_walk_through_ddim_inversion() -> None:
    """The inverted noise images are the latents of LatentWalk: slerp endpoints regenerate the two images."""
    from callbacks.latent_walk import LatentWalk

    # In float64: the walk's endpoints and decode(encode(x)) differ only by rounding (slerp's
    # sin(omega) / sin(omega), the batch of 6 against 2). The 4 DDIM steps of the decoder amplify an error in the
    # latent by at most 1 / sqrt(alpha-bar_{T-1}) = 359 for T = 50 (the first step's x_0 prediction), and the
    # network's own rounding as much; with float64's unit roundoff 1.1e-16 on values of order 10, the difference
    # stays below 1e-11. Float32 (roundoff 6e-8) would give ~1e-3: too loose to mean anything.
    model = tiny(inversion_steps=4).eval().double()
    torch.nn.init.normal_(model.denoiser.output[-1].weight, std=0.05)  # not the zero-initialised identity
    images = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    walks = LatentWalk(pairs=2, steps=3).walks(model, images)
    assert walks["slerp"].shape == (6, 1, 28, 28) and walks["slerp"].dtype == torch.float64
    regenerated = model.decode(model.encode(images[:2]))
    torch.testing.assert_close(walks["slerp"][0], regenerated[0], rtol=0, atol=1e-9)
    torch.testing.assert_close(walks["slerp"][2], regenerated[1], rtol=0, atol=1e-9)
    # The walk's midpoint is a third image, not an endpoint.
    assert (walks["slerp"][1] - regenerated[0]).abs().max() > 1e-3
