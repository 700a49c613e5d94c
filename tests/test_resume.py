"""A run killed mid-epoch and resumed with `--ckpt_path last` ends with the weights of an uninterrupted run,
bit for bit: weights, optimiser, schedule, loop position, the data order and the model's noise all come back."""

import functools
import os

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import fit
from conftest import fit_in_process_at, run_fit, write_text

# Digits (8x8, 20 batches of 64 per epoch) keep the three runs short; the IWAE estimate and all but one test
# batch (the t-SNE of the test codes takes half a minute on the whole split) are switched off for the same
# reason: the test comes after what is compared. The cosine schedule stays on: its length comes from
# max_epochs, which the resumed run is given as the killed one was.
RUN = ("--model", "vae", "--data", "digits", "--data.batch_size", "64", "--trainer.max_epochs", "2",
       "--trainer.deterministic", "true", "--trainer.enable_progress_bar", "false",
       "--trainer.enable_model_summary", "false", "--model.iwae_samples", "0",
       "--trainer.limit_test_batches", "1")  # fmt: skip
STEPS_PER_EPOCH = 20


class Killed(Exception):
    """Stands for the process dying: nothing after it runs, nothing is saved on the way out."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


def final_state(run_dir) -> tuple[dict, int, int]:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return checkpoint["state_dict"], checkpoint["epoch"], checkpoint["global_step"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, int, int]:
    """The final state of the run never killed, shared by the cases."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = fit_in_process_at(cwd, *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    return final_state(cwd / "runs" / "vae" / "version_0")


def with_callbacks(monkeypatch, *callbacks: L.Callback) -> None:
    """fit.main builds its ZooCLI with these extra callbacks, as if given with --trainer.callbacks+=."""
    monkeypatch.setattr(fit, "ZooCLI", functools.partial(fit.ZooCLI, extra_callbacks=list(callbacks)))


@pytest.mark.parametrize(
    ("checkpoint_every", "killed_at"),
    [
        # Killed 3 steps into epoch 1: resumed from the last.ckpt written at the end of epoch 0.
        (None, STEPS_PER_EPOCH + 3),
        # Killed at step 8, resumed from the checkpoint of step 5: in the middle of an epoch. Lightning restores
        # the loop's place in the epoch; the DataModule's state puts the training order at batch 5 of epoch 0,
        # although the model's cosine schedule has Lightning build the loader before the loops' state is read.
        (5, 8),
    ],
    ids=["after_an_epoch_end_checkpoint", "after_a_mid_epoch_checkpoint"],
)
def test_killed_and_resumed_ends_where_an_uninterrupted_run_ends(
    checkpoint_every, killed_at, uninterrupted, fit_in_process, monkeypatch, tmp_path
):
    want, epoch, step = uninterrupted
    assert (epoch, step) == (1, 2 * STEPS_PER_EPOCH)

    every_steps = [ModelCheckpoint(every_n_train_steps=checkpoint_every, save_last=True)] if checkpoint_every else []
    with_callbacks(monkeypatch, *every_steps, KillAt(killed_at))
    with pytest.raises(Killed):
        fit_in_process(*RUN)
    with_callbacks(monkeypatch)
    resumed = fit_in_process(*RUN, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path at runs/vae/version_0/checkpoints/last.ckpt" in resumed.stderr
    # The resumed run logs on into the version it resumes.
    got, resumed_epoch, resumed_step = final_state(tmp_path / "runs" / "vae" / "version_0")
    assert (resumed_epoch, resumed_step) == (epoch, step)
    for name, value in want.items():  # the same float operations in the same order: equal to the last bit
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


# The char GPT checkpoints where it validates, every val_check_interval steps counted across epochs: in the
# middle of an epoch. A tiny one, with the config's dropout (noise the resumed run must draw again).
GPT_RUN = ("--model", "gpt", "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "2",
           "--model.block_size", "32", "--data.block_size", "32", "--data.batch_size", "8",
           "--trainer.max_steps", "10", "--trainer.val_check_interval", "5", "--trainer.limit_val_batches", "1",
           "--trainer.limit_test_batches", "1", "--trainer.callbacks", "[]", "--trainer.deterministic", "true",
           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")  # fmt: skip


def test_a_gpt_killed_between_its_checkpoints_resumes_exactly(tmp_path_factory, monkeypatch):
    runs = {}
    for name in ("uninterrupted", "killed"):
        cwd = tmp_path_factory.mktemp(name)
        write_text(cwd / "data")  # the default data root, ./data
        runs[name] = cwd
    for name in [n for n in os.environ if n.startswith("LIGHTNING_ZOO_")]:
        monkeypatch.delenv(name)
    result = fit_in_process_at(runs["uninterrupted"], *GPT_RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    want, _, step = final_state(runs["uninterrupted"] / "runs" / "gpt" / "version_0")
    assert step == 10

    with_callbacks(monkeypatch, KillAt(8))  # after the checkpoint of step 5, before that of step 10
    with pytest.raises(Killed):
        fit_in_process_at(runs["killed"], *GPT_RUN)
    with_callbacks(monkeypatch)
    resumed = fit_in_process_at(runs["killed"], *GPT_RUN, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, _, resumed_step = final_state(runs["killed"] / "runs" / "gpt" / "version_0")
    assert resumed_step == step
    for name, value in want.items():  # the same float operations in the same order: equal to the last bit
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)


# Under DDP each process trains on its share of the order; the sampler is the DataModule's own (a
# DistributedSampler), so its place in the epoch comes back from the checkpoint too. Digits in batches of 32 over
# 2 processes: 20 steps an epoch each; a checkpoint every 5 steps, the processes "die" at step 8.
KILLER = """
import lightning as L


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"killed before step {self.step}")
"""
EVERY_5 = (
    "{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {every_n_train_steps: 5, save_last: true}}"
)
DDP_RUN = (*RUN, "--data.batch_size", "32", "--trainer.max_epochs", "1", "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu")  # fmt: skip


def test_a_ddp_run_killed_mid_epoch_resumes_exactly(tmp_path_factory):
    runs = {name: tmp_path_factory.mktemp(name) for name in ("uninterrupted", "killed")}
    (runs["killed"] / "killer.py").write_text(KILLER)
    env = {"PYTHONPATH": os.pathsep.join([str(runs["killed"]), os.environ.get("PYTHONPATH", "")])}
    kill = "{class_path: killer.KillAt, init_args: {step: 8}}"

    result = run_fit(*DDP_RUN, "--trainer.callbacks", f"[{EVERY_5}]", cwd=runs["uninterrupted"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    want, _, step = final_state(runs["uninterrupted"] / "runs" / "vae" / "version_0")
    assert step == 20

    killed = run_fit(*DDP_RUN, "--trainer.callbacks", f"[{EVERY_5}, {kill}]", cwd=runs["killed"], env=env, timeout=600)
    assert killed.returncode != 0 and "killed before step 8" in killed.stderr, killed.stderr[-3000:]
    saved = torch.load(runs["killed"] / "runs" / "vae" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5  # the checkpoint the resumed run starts from: mid-epoch
    resumed = run_fit(*DDP_RUN, "--trainer.callbacks", f"[{EVERY_5}]", "--ckpt_path", "last", cwd=runs["killed"],
                      timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, _, resumed_step = final_state(runs["killed"] / "runs" / "vae" / "version_0")
    assert resumed_step == step
    for name, value in want.items():  # the same float operations in the same order: equal to the last bit
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
