"""The command line (zoo/cli.py): the console script and its subcommands, --model by class path, a printed
config replayed alone, the model's own --help, the seed reaching the data order, and `--ckpt_path last`
resuming this run and no other. In this process through main(), but for the console script itself."""

import re
import subprocess
import sys

import pytest
import yaml

import fit
from conftest import REPO, one_error_line, script_in_process_at
from datamodules.images import DigitsDataModule

FAST = ("--trainer.fast_dev_run", "true")
# Digits (8x8) with two training batches: the resume cases train in a second or two.
SHORT = ("--model", "vae", "--data", "digits", "--model.iwae_samples", "0", "--trainer.limit_train_batches", "2",
         "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")  # fmt: skip


@pytest.fixture
def zoo(fit_in_process, tmp_path):
    """`zoo(*args)`: the console script's main (subcommand first) in this process, from tmp_path."""
    return lambda *args: script_in_process_at("zoo.cli", tmp_path, *args)


def test_the_console_script_tests_a_saved_model(lenet_checkpoint, data_root, tmp_path):
    """The entry point pyproject.toml installs, in a real interpreter: `lightning-zoo test --ckpt_path CKPT`."""
    entry = re.search(r'^lightning-zoo = "([\w.]+):(\w+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    module, function = entry.groups()
    launcher = f"import sys; sys.argv[0] = 'lightning-zoo'; from {module} import {function}; {function}()"
    result = subprocess.run(
        [sys.executable, "-c", launcher, "test", "--model", "lenet5", "--ckpt_path", str(lenet_checkpoint),
         "--data.root", str(data_root), "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lenet5 on MNISTDataModule" in result.stdout and "test/acc = " in result.stdout
    assert not list(tmp_path.glob("runs/**/*.ckpt"))  # testing writes no checkpoint


def test_validate_subcommand(zoo):
    result = zoo("validate", *SHORT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae on DigitsDataModule" in result.stdout and "val/neg_elbo_nats = " in result.stdout


def test_predict_without_a_predict_step_is_one_line(zoo):
    ppo = ("--model", "ppo", "--model.num_steps", "16", "--trainer.enable_progress_bar", "false")
    assert "PPO has no predict_step" in one_error_line(zoo("predict", *ppo))


def test_the_console_script_needs_a_subcommand(zoo):
    line = one_error_line(zoo("--model", "vae"))
    assert "choose a subcommand: fit, validate, test, predict" in line


def test_model_by_class_path(fit_in_process):
    result = fit_in_process("--model", "lightning_modules.autoencoders.vae.VAE", "--data", "digits", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae on DigitsDataModule" in result.stdout


def test_a_printed_config_replays_the_run_alone(fit_in_process, tmp_path):
    printed = fit_in_process("--model", "vae", "--data", "digits", "--seed", "3", "--model.latent_dim", "4",
                             "--print_config")  # fmt: skip
    assert printed.returncode == 0, printed.stderr[-2000:]
    (tmp_path / "run.yaml").write_text(printed.stdout)
    replayed = fit_in_process("--config", "run.yaml", "--print_config")
    assert yaml.safe_load(replayed.stdout) == yaml.safe_load(printed.stdout)
    result = fit_in_process("--config", "run.yaml", "--model.iwae_samples", "0", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vae on DigitsDataModule" in result.stdout


def test_model_help_shows_the_options_with_the_config_values(fit_in_process):
    result = fit_in_process("--model", "vae", "--model.latent_dim", "7", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    help_text = " ".join(result.stdout.split())
    assert "--model.lr LR Adam learning rate. (type: float, default: 0.005)" in help_text  # configs/vae.yaml's
    assert re.search(r"dimension of z\. \(type: \w+, default: 7\)", help_text)  # the command line's
    assert "--data.batch_size" in help_text and "default: 64" in help_text
    assert "--trainer." not in help_text and "--model.image_shape" not in help_text  # a fact of the data


class SeededDigits(DigitsDataModule):
    """Digits with a shuffle seed, standing for the DataModules that take one."""

    def __init__(self, shuffle_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.shuffle_seed = shuffle_seed


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_a_drawn_seed_reaches_the_data_order_too(monkeypatch):
    # `--seed_everything true` takes Lightning's seed of the environment (PL_GLOBAL_SEED, else 0) after parsing.
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")
    _, args = fit.translate(["--model", "vae", "--data", f"{__name__}.SeededDigits", "--seed_everything", "true"])
    cli = fit.ZooCLI("vae", args)
    seed = cli.config.seed_everything
    assert isinstance(seed, int) and not isinstance(seed, bool)
    assert cli.datamodule.shuffle_seed == seed == 11


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize(("flags", "want"), [((), 0), (("--seed", "5"), 5)])
def test_the_seed_reaches_the_data_order(flags, want):
    _, args = fit.translate(["--model", "vae", "--data", f"{__name__}.SeededDigits", *flags])
    assert fit.ZooCLI("vae", args).datamodule.shuffle_seed == want


def test_resume_last_continues_this_run_in_its_own_version(fit_in_process, tmp_path):
    first = fit_in_process(*SHORT, "--trainer.max_epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = fit_in_process(*SHORT, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path at runs/vae/version_0/checkpoints/last.ckpt" in resumed.stderr
    assert [p.name for p in (tmp_path / "runs" / "vae").iterdir()] == ["version_0"]  # one TensorBoard line


def test_resume_last_never_takes_another_configurations_run(fit_in_process, tmp_path):
    assert fit_in_process(*SHORT, "--model.latent_dim", "3", "--trainer.max_epochs", "1").returncode == 0
    line = one_error_line(fit_in_process(*SHORT, "--model.latent_dim", "4", "--ckpt_path", "last"))
    assert "no run of this configuration" in line and "model.init_args.latent_dim 3 there, 4 here" in line
