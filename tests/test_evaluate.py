"""scripts/evaluate.py (its main, in this process) on real checkpoints of a classifier and the VAE (written by a
tiny in-process fit.py run): the printed test metric is trainer.test's on the same checkpoint and data, the data
root can be moved, and bad input is one line."""

import shutil

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LambdaCallback

from conftest import fit_in_process_at
from datamodules import MNISTDataModule
from lightning_modules.checkpoint import CheckpointError, load_datamodule, load_model


def fitted_checkpoint(model: str, data_root, workdir, *options: str) -> str:
    """Two training steps of `model` on the tiny MNIST through fit.py; the last.ckpt it writes."""
    result = fit_in_process_at(
        workdir, "--model", model, "--data.root", str(data_root), "--data.batch_size", "16", "--trainer.max_steps",
        "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", *options,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    [checkpoint] = workdir.glob(f"runs/{model}/version_0/checkpoints/last.ckpt")
    return str(checkpoint)


def printed_figures(text: str) -> dict[str, str]:
    return dict(line.strip().split(" = ") for line in text.splitlines() if " = " in line)


# The VAE's importance-sampled -log p(x) with 10 samples instead of the config's 1000 decoder passes per image:
# the same code path, a hundredth of the three test runs' time (fit.py's, evaluate.py's and this test's).
@pytest.mark.parametrize(
    "model, metric, options",
    [("mlp", "test/acc", ()), ("vae", "test/neg_elbo_nats", ("--model.iwae_samples", "10"))],
)
def test_prints_the_test_metrics_of_the_checkpoint(model, metric, options, data_root, tmp_path, script_in_process):
    checkpoint = fitted_checkpoint(model, data_root, tmp_path, *options)
    moved = tmp_path / "moved_data"
    shutil.move(data_root, moved)  # the data moved since training: --data.root says where it is now
    evaluated = script_in_process("evaluate", "--ckpt", checkpoint, "--data.root", str(moved))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    figures = printed_figures(evaluated.stdout)

    # evaluate.py's documented seeding, 0 as the test loop starts: the VAE's -ELBO draws z.
    seeded = LambdaCallback(on_test_start=lambda *_: L.seed_everything(0, verbose=False))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[seeded])
    datamodule = load_datamodule(checkpoint, root=str(moved))  # the data as trained: MNIST, batches of 16
    assert isinstance(datamodule, MNISTDataModule) and datamodule.batch_size == 16
    [expected] = trainer.test(load_model(checkpoint), datamodule=datamodule, verbose=False)
    # The same CPU computation on the same images in the same batches is bit-identical, so the printed value
    # matches to all the 4 decimals printed.
    assert figures[metric] == f"{expected[metric]:.4f}"
    assert set(figures) == set(expected)


def test_raw_weights_are_the_ones_being_trained(data_root, tmp_path, script_in_process):
    # decay 0.5 over two steps: the saved average is (w1 + w2) / 2, the raw weights w2.
    ema = '{"class_path": "lightning.pytorch.callbacks.EMAWeightAveraging", "init_args": {"decay": 0.5}}'
    checkpoint = fitted_checkpoint("mlp", data_root, tmp_path, f"--trainer.callbacks+={ema}")
    evaluate = ("evaluate", "--ckpt", checkpoint, "--data.root", str(data_root))
    saved, raw = script_in_process(*evaluate), script_in_process(*evaluate, "--raw-weights")
    assert saved.returncode == 0 and raw.returncode == 0, saved.stderr[-3000:] + raw.stderr[-3000:]

    model = load_model(checkpoint)
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["current_model_state"])
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    [expected] = trainer.test(model, datamodule=load_datamodule(checkpoint, root=str(data_root)), verbose=False)
    # Bit-identical CPU computations, as above: equal to the 4 decimals printed.
    assert printed_figures(raw.stdout)["test/loss"] == f"{expected['test/loss']:.4f}"
    assert printed_figures(saved.stdout)["test/loss"] != printed_figures(raw.stdout)["test/loss"]


def test_raw_weights_of_a_checkpoint_without_them_is_one_line(lenet_checkpoint, script_in_process):
    refused = script_in_process("evaluate", "--ckpt", str(lenet_checkpoint), "--raw-weights")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"evaluate.py: error: checkpoint {lenet_checkpoint} holds no raw weights beside its state_dict (it was not "
        "written during a run with EMAWeightAveraging); drop --raw-weights"
    ]


def test_bad_input_is_one_line(lenet_checkpoint, tmp_path, script_in_process):
    missing = script_in_process("evaluate", "--ckpt", str(tmp_path / "nowhere.ckpt"))
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"evaluate.py: error: checkpoint {tmp_path / 'nowhere.ckpt'} not found; pass the .ckpt file written by "
        "scripts/fit.py"
    ]
    # The options are checked against the model before any data is read: an untrained classifier will do.
    episodes = script_in_process("evaluate", "--ckpt", str(lenet_checkpoint), "--episodes", "3")
    assert episodes.returncode == 2 and episodes.stdout == ""
    assert episodes.stderr.strip().splitlines() == [
        "evaluate.py: error: ImageClassifier's evaluation takes no --episodes; drop it"
    ]
    video = script_in_process("evaluate", "--ckpt", str(lenet_checkpoint), "--video", "x.gif")
    assert video.returncode == 2 and "cannot be used for --video: it has no render()" in video.stderr


def test_debug_shows_the_traceback(tmp_path, monkeypatch, script_in_process):
    monkeypatch.setenv("LIGHTNING_ZOO_DEBUG", "1")
    with pytest.raises(CheckpointError, match="nowhere.ckpt not found"):
        script_in_process("evaluate", "--ckpt", str(tmp_path / "nowhere.ckpt"))
