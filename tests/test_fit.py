"""scripts/fit.py: the main job as a user runs it, and the 2-process DDP run, in subprocesses; the bad inputs,
the other options and the resume in this process through fit.main (the same code path without the interpreter
and torch import per case)."""

import pytest
import torch

from conftest import N_TRAIN, one_error_line, run_fit

FAST = ("--trainer.fast_dev_run", "true")


def test_vae_fast_dev_run_on_real_format(data_root, tmp_path):
    """The main job as the README gives it, in a real interpreter: the only subprocess run of fit.py's
    training path (besides DDP, which needs processes)."""
    result = run_fit("--model", "vae", *FAST, "--data.root", str(data_root), "--data.fallback", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae on MNISTDataModule (data: MNIST)" in result.stdout
    assert "test/neg_elbo_nats = " in result.stdout
    assert "FALLBACK" not in result.stderr
    assert not list(tmp_path.glob("**/*.ckpt"))  # a smoke test leaves no checkpoint behind


def test_offline_main_job_falls_back_with_one_warning(empty_root, fit_in_process, monkeypatch):
    monkeypatch.setenv("LIGHTNING_ZOO_DATA", str(empty_root))
    result = fit_in_process("--model", "vae", *FAST, "--data.download", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    warning_lines = [line for line in (result.stdout + result.stderr).splitlines() if "FALLBACK" in line]
    assert len(warning_lines) == 1 and str(empty_root) in warning_lines[0]
    assert "(data: embedded_digits)" in result.stdout


def test_data_swap_and_model_options(data_root, fit_in_process):
    result = fit_in_process(
        "--model", "vae", *FAST, "--data", "cifar10", "--data.root", str(data_root),
        "--model.latent_dim", "3", "--data.batch_size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae on CIFAR10DataModule (data: CIFAR10)" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["--model", "vae", "--help"]])
def test_help_lists_models_and_datasets(args, fit_in_process):
    result = fit_in_process(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "models: " in result.stdout and "vae" in result.stdout and "fashion_mnist" in result.stdout


def test_print_config_shows_the_linked_defaults(fit_in_process):
    result = fit_in_process("--model", "vae", "--data", "fashion_mnist", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "lightning_modules.autoencoders.vae.VAE" in result.stdout
    assert "datamodules.images.FashionMNISTDataModule" in result.stdout
    assert "max_epochs: 30" in result.stdout


def test_unknown_model_lists_the_known_ones(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vea"))
    assert "unknown model 'vea'" in line and "models: " in line and "vae" in line and "mnist" in line


def test_no_model(fit_in_process):
    assert "choose a model with --model NAME" in one_error_line(fit_in_process())


def test_unknown_dataset(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", "--data", "imagenet"))
    assert "unknown dataset 'imagenet'" in line and "cifar10" in line


def test_config_key_the_model_does_not_take(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", "--model.hiden_dim", "3", *FAST))
    assert "--model" in line and "hiden_dim" in line and "not accepted" in line


def test_wrong_type_in_config(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", "--trainer.max_epochs", "many"))
    assert "trainer.max_epochs" in line and "many" in line


def test_a_value_outside_the_choices_names_the_flag_as_typed(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", *FAST, "--model.decoder", "poisson"))
    assert "--model.decoder: " in line and "bernoulli" in line and "poisson" in line


def test_missing_dataset_without_fallback(empty_root, fit_in_process):
    line = one_error_line(
        fit_in_process("--model", "vae", *FAST, "--data.root", str(empty_root), "--data.fallback", "false",
                       "--data.download", "false")
    )  # fmt: skip
    assert "MNIST not found" in line and str(empty_root) in line


def test_corrupt_dataset_file(data_root, fit_in_process):
    path = data_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    line = one_error_line(fit_in_process("--model", "vae", *FAST, "--data.root", str(data_root)))
    assert "truncated or corrupt" in line


def test_bad_text_file(tmp_path, fit_in_process):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 ".encode("latin-1") * 200)
    line = one_error_line(fit_in_process("--model", "vae", *FAST, "--data", "text", "--data.path", str(path)))
    assert "not UTF-8" in line


def test_image_options_the_data_cannot_take(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", *FAST, "--data.channels", "2"))
    assert "--data.channels must be 1 or 3" in line


def test_data_the_model_cannot_take(data_root, fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", *FAST, "--data", "text", "--data.root", str(data_root)))
    assert "vae needs image data" in line


def test_missing_checkpoint(fit_in_process):
    line = one_error_line(fit_in_process("--model", "vae", "--ckpt_path", "last", "--data", "digits"))
    assert "no last.ckpt" in line
    line = one_error_line(fit_in_process("--model", "vae", "--ckpt_path", "nowhere.ckpt", "--data", "digits"))
    assert "checkpoint nowhere.ckpt not found" in line


def test_ddp_two_cpu_processes(data_root, tmp_path):
    result = run_fit(
        "--model", "vae", "--data.root", str(data_root), "--trainer.max_epochs", "1",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
        "--data.batch_size", "16", "--trainer.enable_progress_bar", "false", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("vae on MNISTDataModule") == 1  # the summary comes from rank 0 only
    assert "test/neg_elbo_nats = " in result.stdout
    checkpoint = torch.load(
        tmp_path / "runs" / "vae" / "version_0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    # 108 training images (120 less 10% validation) shared by 2 processes, batches of 16 with drop_last:
    # 3 steps each; one process alone would take 6.
    assert checkpoint["global_step"] == (N_TRAIN - N_TRAIN // 10) // 2 // 16 == 3
