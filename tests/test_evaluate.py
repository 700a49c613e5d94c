"""scripts/evaluate.py on real checkpoints of a classifier and the VAE (written by a tiny in-process fit.py run):
the printed test metric is trainer.test's on the same checkpoint and data, the data root can be moved, and bad
input is one line."""

import runpy
import shutil

import lightning as L
import pytest
from lightning.pytorch.callbacks import LambdaCallback

import fit
from conftest import REPO
from datamodules import MNISTDataModule
from lightning_modules.checkpoint import CheckpointError, load_datamodule, load_model


def evaluate_main():
    return runpy.run_path(str(REPO / "scripts" / "evaluate.py"))["main"]  # the real script, in this process


def fitted_checkpoint(model: str, data_root, workdir, monkeypatch) -> str:
    """Two training steps of `model` on the tiny MNIST through fit.py; the last.ckpt it writes."""
    monkeypatch.chdir(workdir)
    status = fit.main(["--model", model, "--data.root", str(data_root), "--data.batch_size", "16",
                       "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
                       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"])  # fmt: skip
    assert status == 0
    [checkpoint] = workdir.glob(f"runs/{model}/version_0/checkpoints/last.ckpt")
    return str(checkpoint)


def printed_figures(text: str) -> dict[str, str]:
    return dict(line.strip().split(" = ") for line in text.splitlines() if " = " in line)


@pytest.mark.parametrize("model, metric", [("mlp", "test/acc"), ("vae", "test/neg_elbo_nats")])
def test_prints_the_test_metrics_of_the_checkpoint(model, metric, data_root, tmp_path, monkeypatch, capsys):
    checkpoint = fitted_checkpoint(model, data_root, tmp_path, monkeypatch)
    moved = tmp_path / "moved_data"
    shutil.move(data_root, moved)  # the data moved since training: --data.root says where it is now
    capsys.readouterr()
    assert evaluate_main()(["--ckpt", checkpoint, "--data.root", str(moved)]) == 0
    figures = printed_figures(capsys.readouterr().out)

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


def test_bad_input_is_one_line(data_root, tmp_path, monkeypatch, capsys):
    evaluate = evaluate_main()
    assert evaluate(["--ckpt", str(tmp_path / "nowhere.ckpt")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"evaluate.py: error: checkpoint {tmp_path / 'nowhere.ckpt'} not found; pass the .ckpt file written by "
        "scripts/fit.py"
    ]
    checkpoint = fitted_checkpoint("mlp", data_root, tmp_path, monkeypatch)
    capsys.readouterr()
    assert evaluate(["--ckpt", checkpoint, "--episodes", "3"]) == 2
    output = capsys.readouterr()
    assert output.out == "" and output.err.strip().splitlines() == [
        "evaluate.py: error: ImageClassifier's evaluation takes no --episodes; drop it"
    ]
    assert evaluate(["--ckpt", checkpoint, "--video", "x.gif"]) == 2
    assert "cannot be used for --video: it has no render()" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTNING_ZOO_DEBUG", "1")
    with pytest.raises(CheckpointError, match="nowhere.ckpt not found"):
        evaluate_main()(["--ckpt", str(tmp_path / "nowhere.ckpt")])
