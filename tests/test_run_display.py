"""What a run shows: the console (progress bar, model summary, no tips) and TensorBoard (HParams, learning-rate
curves, text samples at train end, VAE prior samples, a classifier's mistakes, a PPO run's progress bar)."""

import logging
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from callbacks.classifier_mistakes import ClassifierMistakes
from callbacks.console import DropNoise, ZooModelSummary, ZooProgressBar, display_callbacks
from callbacks.episode_progress import EpisodeProgress
from callbacks.hparams_summary import HParamsSummary
from callbacks.learning_rate import LearningRateCurve
from callbacks.sample_grid import SampleGrid
from callbacks.text_samples import TextSamples
from datamodules import MNISTDataModule, TextDataModule
from datamodules.environments import GymDataModule
from lightning_modules.autoencoders.vae import VAE
from lightning_modules.blocks.small_nets import MLP
from lightning_modules.classifiers.classifier import ImageClassifier
from lightning_modules.language.gpt import GPT
from lightning_modules.rl.ppo import PPO

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run), size_guidance={"tensors": 0, "images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def tiny_classifier(**kwargs) -> ImageClassifier:
    return ImageClassifier(partial(MLP, widths=(8,)), image_shape=(1, 28, 28), num_classes=10, **kwargs)


def trainer_at(tmp_path: Path, callbacks: list, logger: bool = True, **kwargs) -> L.Trainer:
    kwargs = {"enable_progress_bar": False, "enable_model_summary": False, **kwargs}
    logger = TensorBoardLogger(tmp_path, name="run", default_hp_metric=False) if logger else False
    return L.Trainer(logger=logger, enable_checkpointing=False, callbacks=callbacks, **kwargs)


def mnist(data_root: Path) -> MNISTDataModule:
    return MNISTDataModule(root=str(data_root), batch_size=16, download=False, fallback=False)


# ---- console ---------------------------------------------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_lightning_tips_are_dropped_and_other_lines_kept():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, message, (), None)

    assert not DropNoise().filter(record("💡 Tip: For seamless cloud logging, try installing litlogger"))
    assert DropNoise().filter(record("GPU available: False, used: False"))
    display_callbacks()
    collect, lightning_log = Collect(), logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(collect)
    try:
        L.Trainer(logger=False, enable_checkpointing=False, callbacks=[ZooModelSummary()])
    finally:
        lightning_log.removeHandler(collect)
    shown = "\n".join(collect.messages)
    assert "GPU available" in shown
    assert "Tip" not in shown and "already configured" not in shown


def test_step_budgeted_run_shows_its_epoch_without_a_negative_last_epoch_nor_flops(data_root, tmp_path, capsys):
    trainer = L.Trainer(
        max_steps=3, max_epochs=-1, logger=False, enable_checkpointing=False, limit_val_batches=0,
        callbacks=[ZooProgressBar(), ZooModelSummary()],
    )  # fmt: skip
    trainer.fit(tiny_classifier(), datamodule=mnist(data_root))
    shown = capsys.readouterr().out
    assert "Epoch 0 (max_steps 3)" in shown and "/-2" not in shown
    assert "FLOPs" not in shown and "Trainable" not in shown and "Params" in shown
    assert "train/loss" in shown and "v_num" not in shown
    # A run budgeted in epochs keeps Lightning's "Epoch E/last".
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, callbacks=[ZooProgressBar()])  # fmt: skip
    trainer.fit(tiny_classifier(), datamodule=mnist(data_root))
    assert "Epoch 0/0" in capsys.readouterr().out


# ---- TensorBoard -----------------------------------------------------------------------------------------------


def test_hparams_entry_has_the_test_figures_and_the_seed(data_root, tmp_path):
    L.seed_everything(7)
    model = tiny_classifier()
    trainer = trainer_at(tmp_path, [HParamsSummary()], max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=mnist(data_root))
    (result,) = trainer.test(model, datamodule=mnist(data_root), verbose=False)
    run = events(tmp_path / "run" / "version_0")
    content = run.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(info.name.tag for info in experiment.metric_infos) == sorted(result)  # test/acc, test/loss
    assert "hp_metric" not in run.Tags()["scalars"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["seed"].string_value == "7"
    assert start.hparams["lr"].number_value == model.hparams.lr
    # The tab's value of a metric is its scalar's last event: the test's own figure (float32 in the event file).
    assert run.Scalars("test/acc")[-1].value == pytest.approx(result["test/acc"], rel=1e-6)


def test_a_fit_only_run_writes_its_hparams_entry_with_the_validation_figures(data_root, tmp_path):
    """`lightning-zoo fit` runs no test: the entry comes after fit, with the val/ metrics; written once."""
    model = tiny_classifier()
    summary = HParamsSummary(after="fit")
    trainer = trainer_at(tmp_path, [summary], max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                         num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(model, datamodule=mnist(data_root))
    trainer.test(model, datamodule=mnist(data_root), verbose=False)  # after the entry: adds none
    run = events(tmp_path / "run" / "version_0")
    content = run.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert sorted(info.name.tag for info in experiment.metric_infos) == ["val/acc", "val/loss"]
    written = [
        value.tag
        for path in (tmp_path / "run" / "version_0").glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    ]
    assert written.count("_hparams_/experiment") == 1


def test_learning_rate_curve_follows_the_schedule_and_idles_without_a_logger(data_root, tmp_path):
    model = tiny_classifier(schedule="cosine", lr=0.01)
    trainer = trainer_at(tmp_path, [LearningRateCurve()], max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                         log_every_n_steps=1)  # fmt: skip
    trainer.fit(model, datamodule=mnist(data_root))
    run = events(tmp_path / "run" / "version_0")
    curve = [event.value for event in run.Scalars("lr-AdamW/pg1")]  # pg1, pg2: with and without weight decay
    assert [event.value for event in run.Scalars("lr-AdamW/pg2")] == curve
    # Cosine from lr over 4 steps, logged before each step: lr (1 + cos(pi i / 4)) / 2, i = 0..3 (float32 events).
    want = [0.01 * (1 + torch.cos(torch.tensor(torch.pi * i / 4)).item()) / 2 for i in range(4)]
    assert curve == pytest.approx(want, rel=1e-6)
    trainer_at(tmp_path, [LearningRateCurve()], logger=False, max_steps=1, limit_val_batches=0).fit(
        tiny_classifier(schedule="cosine"), datamodule=mnist(data_root)
    )


def test_text_samples_at_the_end_of_a_run_shorter_than_their_interval(data_root, tmp_path):
    data = TextDataModule(root=str(data_root), block_size=16, batch_size=4)
    data.setup("fit")
    model = GPT(vocab_size=data.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    callback = TextSamples(every_n_steps=500, prompt="Winston", max_new_tokens=5)
    trainer_at(tmp_path, [callback], max_steps=3, limit_val_batches=0).fit(model, datamodule=data)
    texts = events(tmp_path / "run" / "version_0").Tensors("samples/text_summary")
    assert [event.step for event in texts] == [3]


def test_vae_prior_samples_are_drawn(data_root, tmp_path):
    model = VAE(image_shape=(1, 28, 28), hidden_dim=16, latent_dim=2, iwae_test_images=2, iwae_samples=2)
    trainer = trainer_at(tmp_path, [SampleGrid(n=4)], max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=mnist(data_root))
    assert "samples/grid" in events(tmp_path / "run" / "version_0").Tags()["images"]


def test_classifier_mistakes_show_the_most_confident_wrong_test_images(data_root, tmp_path):
    torch.manual_seed(0)
    model, data = tiny_classifier(), mnist(data_root)
    trainer = trainer_at(tmp_path, [ClassifierMistakes(n=5)], max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data, verbose=False)
    run = events(tmp_path / "run" / "version_0")
    assert {"test/confusion_matrix", "test/confident_mistakes"} <= set(run.Tags()["images"])
    # Independently: the softmax of the model on the whole test split; the 5 wrong ones of highest probability.
    images, labels = data.batch("test")
    with torch.no_grad():
        probabilities = model.eval()(images).softmax(-1)
    confidence, predicted = probabilities.max(-1)
    wrong = (predicted != labels).nonzero().squeeze(1)
    worst = wrong[confidence[wrong].argsort(descending=True)[:5]]
    caption = run.Tensors("test/confident_mistakes_labels/text_summary")[0].tensor_proto.string_val[0].decode()
    lines = caption.split("  \n")
    assert len(lines) == 5
    for line, i in zip(lines, worst.tolist(), strict=True):
        assert f"predicted {int(predicted[i])} ({float(confidence[i]):.3f}), true {int(labels[i])}" in line
    grid = run.Images("test/confident_mistakes")[0]
    assert (grid.width, grid.height) == (5 * 30 + 2, 30 + 2)  # 5 images of 28 in one row, padding 2


def test_ppo_progress_bar_shows_return_and_env_steps_per_second():
    model = PPO(num_envs=2, num_steps=16, num_minibatches=2, total_env_steps=2 * 2 * 16 * 8)
    trainer = L.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, callbacks=[EpisodeProgress()])
    trainer.fit(model, datamodule=GymDataModule(eval_episodes=2))
    shown = trainer.progress_bar_metrics
    assert {"return", "env_steps/s"} <= set(shown)
    assert shown["return"] >= 8  # CartPole's episodes last 8 steps at least, each worth 1
    assert shown["env_steps/s"] > 0


# ---- configs ---------------------------------------------------------------------------------------------------


def config_callbacks(name: str) -> list[str]:
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return [callback["class_path"] for callback in config["trainer"].get("callbacks", [])]


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_configs_show_what_their_model_has(name):
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    model = config["model"]["init_args"]
    scheduled = model.get("schedule") not in (None, "constant") or model.get("cosine_decay") or "warmup_steps" in model
    callbacks = config_callbacks(name)
    # PPO logs its annealed lr itself, against environment steps.
    assert ("callbacks.learning_rate.LearningRateCurve" in callbacks) == (bool(scheduled) and name != "ppo")
    is_classifier = config["model"]["class_path"].endswith("ImageClassifier")
    assert ("callbacks.classifier_mistakes.ClassifierMistakes" in callbacks) == is_classifier
    if name == "vae":
        assert "callbacks.sample_grid.SampleGrid" in callbacks
    if name == "ppo":
        assert "callbacks.episode_progress.EpisodeProgress" in callbacks
