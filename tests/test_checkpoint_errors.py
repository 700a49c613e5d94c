"""Every bad checkpoint is one line that names the file and what is wrong: not a checkpoint, truncated, another
model's, another configuration's, another vocabulary's; fit.py's --ckpt_path refuses one before training."""

from pathlib import Path

import pytest
import torch

from conftest import one_error_line, script_in_process_at, write_text
from datamodules.text import TextDataModule
from lightning_modules.blocks.small_nets import LeNet5
from lightning_modules.checkpoint import CheckpointError, check_compatible, load_model, read_checkpoint
from lightning_modules.classifiers.classifier import ImageClassifier


def lenet(**hparams) -> ImageClassifier:
    return ImageClassifier(LeNet5, image_shape=(1, 28, 28), num_classes=10, **hparams)


def rewritten(source: Path, target: Path, **changes) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    torch.save({**checkpoint, **changes}, target)
    return target


def test_a_file_that_is_no_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{path} cannot be read: it is not a checkpoint"):
        read_checkpoint(path)


def test_a_truncated_checkpoint_is_named_as_such(lenet_checkpoint, tmp_path):
    path = tmp_path / "cut.ckpt"
    path.write_bytes(lenet_checkpoint.read_bytes()[:4096])
    with pytest.raises(CheckpointError, match=rf"{path} cannot be read: it is truncated or damaged"):
        read_checkpoint(path)


def test_a_torch_file_without_a_state_dict_is_not_a_lightning_checkpoint(tmp_path):
    path = tmp_path / "tensor.ckpt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=rf"{path} is not a Lightning checkpoint"):
        read_checkpoint(path)


def test_another_models_checkpoint_is_refused(lenet_checkpoint, tmp_path):
    checkpoint = torch.load(lenet_checkpoint, weights_only=True)
    foreign = {**checkpoint["hyper_parameters"], "_class_path": "somewhere.else.Model"}
    path = rewritten(lenet_checkpoint, tmp_path / "foreign.ckpt", hyper_parameters=foreign)
    with pytest.raises(CheckpointError, match=rf"{path} holds a somewhere.else.Model, not the .*ImageClassifier"):
        check_compatible(path, lenet())
    with pytest.raises(CheckpointError, match=rf"{path} holds a somewhere.else.Model, not a model of this project"):
        load_model(path)


def test_another_configurations_checkpoint_names_the_differing_hyper_parameters(lenet_checkpoint):
    check_compatible(lenet_checkpoint, lenet())  # the configuration it was saved with
    with pytest.raises(CheckpointError, match=r"other hyper-parameters \(lr 0.001 -> 0.01, weight_decay 0.0 -> 0.1\)"):
        check_compatible(lenet_checkpoint, lenet(lr=0.01, weight_decay=0.1))


def test_another_vocabularys_checkpoint_is_refused(lenet_checkpoint, tmp_path):
    write_text(tmp_path)
    data = TextDataModule(root=str(tmp_path))
    path = rewritten(lenet_checkpoint, tmp_path / "text.ckpt", TextDataModule={"vocab": "abc"})
    with pytest.raises(CheckpointError, match=rf"{path} was trained on a text with another vocabulary"):
        check_compatible(path, lenet(), data)
    same = rewritten(lenet_checkpoint, tmp_path / "same.ckpt", TextDataModule={"vocab": data.vocab})
    check_compatible(same, lenet(), data)


RUN = ("--model", "lenet5", "--data", "digits", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1",
       "--trainer.limit_test_batches", "1", "--trainer.num_sanity_val_steps", "0",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")  # fmt: skip


def test_fit_resumes_into_another_configuration_with_one_line(fit_in_process, tmp_path):
    first = fit_in_process(*RUN)
    assert first.returncode == 0, first.stderr[-3000:]
    # The checkpoint file given explicitly (`--ckpt_path last` refuses earlier: no run of this configuration).
    ckpt = "runs/lenet5/version_0/checkpoints/last.ckpt"
    resumed = fit_in_process(*RUN, "--model.lr", "0.5", "--ckpt_path", ckpt)
    assert resumed.returncode == 2
    last_line = resumed.stderr.strip().splitlines()[-1]
    assert last_line.startswith("fit.py: error: checkpoint runs/lenet5/version_0/checkpoints/last.ckpt was trained")
    assert "lr 0.002 -> 0.5" in last_line
    assert not (tmp_path / "runs" / "lenet5" / "version_1" / "checkpoints").exists()  # nothing trained


def test_hyper_parameters_compare_as_a_config_file_holds_them(lenet_checkpoint, tmp_path):
    """A tuple saved by the Python API and the list a config gives, or a class path with and without empty
    init_args, are the same configuration."""
    checkpoint = torch.load(lenet_checkpoint, weights_only=True)
    as_config = {**checkpoint["hyper_parameters"], "milestones": [0.5, 0.75]}
    path = rewritten(lenet_checkpoint, tmp_path / "listed.ckpt", hyper_parameters=as_config)
    check_compatible(path, lenet(milestones=(0.5, 0.75)))


VAE = ("--model", "vae", "--data", "digits", "--model.iwae_samples", "0", "--trainer.limit_test_batches", "1",
       "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")  # fmt: skip


def test_testing_takes_other_settings_but_not_other_weights(fit_in_process, tmp_path):
    first = fit_in_process(*VAE, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    ckpt = "runs/vae/version_0/checkpoints/last.ckpt"
    zoo = lambda *args: script_in_process_at("zoo.cli", tmp_path, "test", *VAE, "--ckpt_path", ckpt, *args)  # noqa: E731
    tested = zoo("--model.lr", "0.5")  # a training setting: the weights are the same
    assert tested.returncode == 0, tested.stderr[-3000:]
    line = one_error_line(zoo("--model.latent_dim", "3"))
    assert f"checkpoint {ckpt} does not fit this VAE (hyper-parameters that differ: latent_dim 20 -> 3)" in line
