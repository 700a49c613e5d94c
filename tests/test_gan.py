"""DCGAN: the losses against their formulas on hand-made logits, the two updates' gradients kept apart, both
optimisers stepping every batch, the networks' shapes, the contracts the grids and walks use, and the model through
scripts/fit.py."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_modules.gan.dcgan import DCGAN, MinibatchStd
from lightning_modules.gan.evaluation import class_shares_and_fid
from lightning_modules.gan.losses import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    non_saturating_discriminator_loss,
    non_saturating_generator_loss,
)
from lightning_modules.protocols import Encodes, Samples

REAL = torch.tensor([2.0, -1.0, 0.5])
FAKE = torch.tensor([-3.0, 0.0, 1.5])
sigmoid = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731


def test_the_non_saturating_losses_match_their_formulas() -> None:
    """-log D(x) - log(1 - D(G(z))) and -log D(G(z)), D = sigmoid, written out with math on each logit."""
    d = (
        sum(-math.log(sigmoid(r)) for r in REAL.tolist()) / 3
        + sum(-math.log(1 - sigmoid(f)) for f in FAKE.tolist()) / 3
    )
    g = sum(-math.log(sigmoid(f)) for f in FAKE.tolist()) / 3
    # float32 softplus against float64 logs: ~1e-7 relative.
    assert non_saturating_discriminator_loss(REAL, FAKE).item() == pytest.approx(d, rel=1e-6)
    assert non_saturating_generator_loss(FAKE).item() == pytest.approx(g, rel=1e-6)


def test_the_hinge_losses_match_their_formulas() -> None:
    """mean max(0, 1 - r) + mean max(0, 1 + f) = (0 + 2 + 0.5) / 3 + (0 + 1 + 2.5) / 3, and -mean f = -(-1.5) / 3."""
    assert hinge_discriminator_loss(REAL, FAKE).item() == pytest.approx(2.5 / 3 + 3.5 / 3, rel=1e-6)
    assert hinge_generator_loss(FAKE).item() == pytest.approx(1.5 / 3, rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_networks_map_latents_to_images_and_images_to_logits(shape, spectral_norm) -> None:
    model = DCGAN(image_shape=shape, generator_width=8, discriminator_width=8, spectral_norm=spectral_norm)
    fake = model.generator(torch.randn(3, 100))
    assert fake.shape == (3, *shape) and fake.abs().max() <= 1
    assert model.discriminator(fake).shape == (3,)


@pytest.mark.parametrize("batch, group", [(8, 4), (6, 3), (5, 1)])
def test_minibatch_std_appends_each_groups_spread(batch: int, group: int) -> None:
    """The appended channel of image i is the mean over features of the population standard deviation of its group
    (the images j with j = i modulo batch / group), written as a loop in float64; a group of one has no spread
    (sqrt of the 1e-8 guard). float32 against float64 over a few hundred values: ~1e-6 relative."""
    x = torch.randn(batch, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    out = MinibatchStd(group_size=4)(x)
    assert out.shape == (batch, 4, 4, 4) and torch.equal(out[:, :3], x)
    groups = batch // group
    for i in range(batch):
        members = x.double()[[j for j in range(batch) if j % groups == i % groups]]
        expected = ((members - members.mean(0)).pow(2).mean(0) + 1e-8).sqrt().mean()
        torch.testing.assert_close(out[i, 3], torch.full((4, 4), expected.item()), rtol=1e-5, atol=0)
    model = DCGAN(generator_width=8, discriminator_width=8, minibatch_std=True)
    assert model.discriminator(model.generator(torch.randn(batch, 100))).shape == (batch,)


def tiny(**options) -> DCGAN:
    return DCGAN(generator_width=8, discriminator_width=8, inversion_steps=5, **options)


def tiny_trainer(batches: int) -> L.Trainer:
    return L.Trainer(max_epochs=1, limit_train_batches=batches, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)  # fmt: skip


def images(n: int = 24) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.rand(n, 1, 28, 28), torch.zeros(n, dtype=torch.long))
    return torch.utils.data.DataLoader(data, batch_size=8)


@pytest.mark.parametrize("loss", ["non_saturating", "hinge"])
def test_each_update_sends_gradients_to_its_own_network_only(loss: str) -> None:
    """Gradient hooks on every parameter record which update reached it, through Lightning's real training loop:
    the discriminator's update must not reach the generator (its fakes are detached) and the generator's must not
    reach the discriminator (switched off by toggle_optimizer)."""
    model = tiny(loss=loss)
    reached: set[tuple[str, str]] = set()
    phase = {"now": ""}
    for name, parameter in model.named_parameters():
        if name.startswith(("generator.", "discriminator.")):
            parameter.register_hook(lambda grad, name=name: reached.add((phase["now"], name.split(".")[0])))
    for step in ("discriminator_step", "generator_step"):
        original = getattr(model, step)

        def tracked(*args, original=original, step=step):
            phase["now"] = step
            return original(*args)

        setattr(model, step, tracked)
    tiny_trainer(2).fit(model, images())
    assert reached == {("discriminator_step", "discriminator"), ("generator_step", "generator")}


def test_both_optimisers_step_every_batch_and_the_average_follows() -> None:
    model = tiny(ema_decay=0.5)
    before = [p.detach().clone() for p in model.generator_ema.parameters()]
    trainer = tiny_trainer(3)
    trainer.fit(model, images())
    d_optimizer, g_optimizer = (o.optimizer if hasattr(o, "optimizer") else o for o in trainer.optimizers)
    for optimizer in (d_optimizer, g_optimizer):
        assert {int(state["step"]) for state in optimizer.state.values()} == {3}
    assert trainer.global_step == 6  # Lightning counts each optimiser's step
    # decay 0.5 over 3 steps: the average moved off its start, but is not the generator itself.
    moved = [not torch.equal(a, b) for a, b in zip(model.generator_ema.parameters(), before, strict=True)]
    assert any(moved)
    assert not all(torch.equal(a, b) for a, b in zip(model.generator_ema.parameters(), model.generator.parameters(),
                                                     strict=True))  # fmt: skip


def test_the_average_measures_its_own_batch_norm_statistics_before_sampling() -> None:
    """After a generator update the averaged generator's statistics are stale; the next decode measures them on its
    own activations: with one batch, its first batch norm's running mean is the mean of what that layer receives
    from the same fixed latents (float32 means of a few thousand values: ~1e-6, checked to 1e-5), and a model
    loaded from its state_dict draws the same samples."""
    torch.manual_seed(0)
    model = tiny(ema_decay=0.5)
    tiny_trainer(2).fit(model, images())
    assert not model.ema_statistics_fresh
    model.refresh_ema_statistics(batches=1, batch_size=64)
    norm = next(m for m in model.generator_ema.modules() if isinstance(m, torch.nn.BatchNorm2d))
    received = []
    handle = norm.register_forward_hook(lambda module, inputs, output: received.append(inputs[0]))
    model.generator_ema.train()
    with torch.no_grad():
        model.generator_ema(model.latents(64, torch.Generator().manual_seed(0)))
    handle.remove()
    torch.testing.assert_close(norm.running_mean, received[0].mean((0, 2, 3)), rtol=0, atol=1e-5)
    assert norm.momentum == 0.1 and model.ema_statistics_fresh
    z = torch.randn(3, 100)
    model.ema_statistics_fresh.fill_(False)
    drawn = model.decode(z)
    loaded = tiny(ema_decay=0.5)
    loaded.load_state_dict(model.state_dict())
    assert not loaded.ema_statistics_fresh  # not saved: measured again
    torch.testing.assert_close(loaded.decode(z), drawn, rtol=0, atol=0)


def test_sample_decode_and_encode_serve_the_grids_and_walks() -> None:
    """SampleGrid needs sample(n), LatentWalk encode and decode (Encodes): encode inverts the generator by descent."""
    torch.manual_seed(0)
    model = tiny().eval()
    assert isinstance(model, Samples) and isinstance(model, Encodes)
    samples = model.sample(4)
    assert samples.shape == (4, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    target = model.decode(torch.randn(2, 100))
    z = model.encode(target, steps=100)
    assert z.shape == (2, 100)
    # 100 descent steps must bring the regenerated image much closer to the target than its starting latent's.
    start = (model.decode(model.encode(target, steps=1)) - target).pow(2).mean()
    assert (model.decode(z) - target).pow(2).mean() < 0.5 * start


def test_evaluate_reports_the_fid_and_class_shares(lenet_checkpoint: Path, data_root: Path) -> None:
    from datamodules import MNISTDataModule

    datamodule = MNISTDataModule(root=str(data_root), batch_size=8)
    datamodule.setup("test")
    figures = class_shares_and_fid(tiny().eval(), datamodule, str(lenet_checkpoint), samples=50, seed=0)
    assert sorted(figures) == ["class_share_max", "class_share_min", "fid"]
    # 50 samples over 10 classes: shares are multiples of 1/50, the smallest at most 1/10 and the largest at least.
    assert figures["class_share_min"] <= 0.1 <= figures["class_share_max"]
    assert round(figures["class_share_max"] * 50) == pytest.approx(figures["class_share_max"] * 50)
    assert tiny().evaluate(datamodule) == {}  # no classifier, no figures


def test_bad_options_are_one_line() -> None:
    with pytest.raises(ValueError, match="gan needs square images with a side divisible by 4"):
        DCGAN(image_shape=(1, 30, 28))
    with pytest.raises(ValueError, match="--model.ema_decay must be in"):
        DCGAN(ema_decay=1.0)


def test_fast_dev_run(data_root: Path, fit_in_process) -> None:
    result = fit_in_process("--model", "gan", "--data.root", str(data_root), "--trainer.fast_dev_run", "true",
                            "--model.inversion_steps", "3")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/d_loss" in result.stdout and "test/d_acc_fake" in result.stdout


def test_fid_every_n_epochs_through_fit(
    data_root: Path, lenet_checkpoint: Path, tmp_path: Path, fit_in_process
) -> None:
    """Two tiny epochs with SampleFID every epoch: train/fid logged during training, test/fid at the test."""
    result = fit_in_process(
        "--model", "gan", "--data.root", str(data_root), "--trainer.max_epochs", "2", "--model.generator_width", "8",
        "--model.discriminator_width", "8", "--model.inversion_steps", "3", "--data.batch_size", "32",
        "--trainer.limit_train_batches", "2", "--trainer.callbacks+=callbacks.sample_fid.SampleFID",
        "--trainer.callbacks.classifier", str(lenet_checkpoint), "--trainer.callbacks.n", "20",
        "--trainer.callbacks.every_n_epochs", "1", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(tmp_path / "csv"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/fid" in result.stdout
    (metrics,) = (tmp_path / "csv").rglob("metrics.csv")
    header, *rows = metrics.read_text().splitlines()
    column = header.split(",").index("train/fid")
    assert sum(1 for row in rows if row.split(",")[column]) == 2
