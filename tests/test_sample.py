"""scripts/sample.py (its main, in this process): text from a GPT checkpoint (vocabulary inside), images from a VAE."""

import lightning as L
import pytest
import torch
from PIL import Image

from conftest import SAMPLE_TEXT, fit_in_process_at, write_text
from lightning_modules.autoencoders.vae import VAE

TINY_GPT = ("--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2", "--model.block_size", "32",
            "--data.block_size", "32", "--data.batch_size", "8")  # fmt: skip
QUIET = ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")


def train(*args: str, cwd):
    result = fit_in_process_at(cwd, *args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", *QUIET)
    assert result.returncode == 0, result.stderr[-3000:]
    return next(cwd.glob("runs/*/version_0/checkpoints/last.ckpt"))


@pytest.fixture(scope="module")
def gpt_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    write_text(folder / "data")
    checkpoint = train("--model", "gpt", "--data.root", str(folder / "data"), *TINY_GPT, cwd=folder)
    (folder / "data" / "text" / "1984.txt").unlink()  # sampling must need no data file
    return checkpoint


def test_vocabulary_travels_in_the_checkpoint(gpt_checkpoint):
    saved = torch.load(gpt_checkpoint, map_location="cpu", weights_only=True)
    assert saved["TextDataModule"]["vocab"] == "".join(sorted(set(SAMPLE_TEXT)))
    assert saved["hyper_parameters"]["vocab_size"] == len(set(SAMPLE_TEXT))


def test_text_from_a_prompt(gpt_checkpoint, script_in_process):
    args = ("--ckpt", str(gpt_checkpoint), "--prompt", "Winston", "--max_new_tokens", "40", "--num_samples", "2")
    result = script_in_process("sample", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    samples = result.stdout.rstrip("\n").split("\n---\n")
    assert len(samples) == 2 and all(s.startswith("Winston") and len(s) == len("Winston") + 40 for s in samples)
    assert set("".join(samples)) <= set(saved_vocab(gpt_checkpoint))


def test_text_is_seeded(gpt_checkpoint, script_in_process):
    args = ["--ckpt", str(gpt_checkpoint), "--prompt", "W", "--max_new_tokens", "20"]
    texts = []
    for seed in ("0", "0", "1"):
        result = script_in_process("sample", *args, "--seed", seed)
        assert result.returncode == 0, result.stderr[-3000:]
        texts.append(result.stdout)
    assert texts[0] == texts[1] != texts[2]


def saved_vocab(checkpoint) -> str:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["TextDataModule"]["vocab"]


def test_prompt_outside_the_vocabulary_is_one_clear_line(gpt_checkpoint, script_in_process):
    result = script_in_process("sample", "--ckpt", str(gpt_checkpoint), "--prompt", "Winston XZ€Z")
    error = result.stderr
    assert result.returncode == 2
    assert len(error.strip().splitlines()) == 1
    assert "outside the model's vocabulary: 'XZ€'" in error


def vae_checkpoint(tmp_path):
    """The checkpoint layout scripts/fit.py writes (LightningCLI records the class in `_class_path`), made
    in-process: training a VAE here would only slow the suite down."""
    model = VAE(image_shape=(1, 8, 8), hidden_dim=16, latent_dim=2)
    checkpoint = tmp_path / "vae.ckpt"
    hyper_parameters = {**model.hparams, "_class_path": "lightning_modules.autoencoders.vae.VAE"}
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": hyper_parameters,
            "pytorch-lightning_version": L.__version__,
        },
        checkpoint,
    )
    return checkpoint


def test_image_grid_from_a_vae(tmp_path, script_in_process):
    checkpoint = vae_checkpoint(tmp_path)
    out = tmp_path / "grid.png"
    result = script_in_process("sample", "--ckpt", str(checkpoint), "--n", "9", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    # make_grid's layout: 3 x 3 images of 8 x 8 with 2-pixel padding around and between them.
    assert Image.open(out).size == (3 * 8 + 4 * 2, 3 * 8 + 4 * 2)


def test_inpainting_needs_the_contract_and_inversion_the_recorded_data(tmp_path, script_in_process):
    checkpoint = str(vae_checkpoint(tmp_path))
    inpainted = script_in_process("sample", "--ckpt", checkpoint, "--n", "2", "--inpaint", "box")
    assert inpainted.returncode == 2
    assert "VAE cannot be used for sample.py --inpaint: it has no inpaint()" in inpainted.stderr
    # A VAE encodes and decodes, so --invert takes it; this checkpoint records no DataModule to take images from.
    inverted = script_in_process("sample", "--ckpt", checkpoint, "--n", "2", "--invert")
    assert inverted.returncode == 2 and "records no image DataModule" in inverted.stderr


def test_missing_checkpoint(tmp_path, script_in_process):
    result = script_in_process("sample", "--ckpt", str(tmp_path / "nope.ckpt"))
    assert result.returncode == 2 and "nope.ckpt not found" in result.stderr
