"""SimCLR: its views (shape, range, per-image randomness, the seed), its representation (the backbone's pooled
output), LARS, and fast_dev_run through scripts/fit.py on the tiny datasets."""

import math

import pytest
import torch

from callbacks.latent_embedding import LatentEmbedding
from lightning_modules.blocks.resnet import ResNet
from lightning_modules.optim import LARS
from lightning_modules.self_supervised.simclr import SimCLR
from lightning_modules.self_supervised.views import gaussian_blur, resized_crops, rotate_hue, simclr_view

TINY = ("--model.backbone.depth", "8", "--data.batch_size", "16", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false")  # fmt: skip


def images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(6, 1, 28, 28), (6, 3, 32, 32), (4, 3, 64, 64)], ids=["grey", "colour", "blurred"])
def test_views_keep_shape_dtype_and_range_and_differ_per_image(shape):
    x = images(shape)
    views = simclr_view(x, generator=torch.Generator().manual_seed(1))
    assert views.shape == x.shape and views.dtype == x.dtype
    assert views.min() >= 0 and views.max() <= 1
    again = simclr_view(x, generator=torch.Generator().manual_seed(2))
    # Two views of each image differ (a crop of the same window with the same jitter has probability 0).
    assert ((views - again).abs().flatten(1).amax(dim=1) > 1e-3).all()


def test_the_same_seed_gives_the_same_views():
    model = SimCLR(image_shape=(3, 32, 32), backbone=lambda shape, n: ResNet(shape, n, depth=8))
    x = images((5, 3, 32, 32))
    first = model.views(x, torch.Generator().manual_seed(7))
    assert torch.equal(first, model.views(x, torch.Generator().manual_seed(7)))
    assert first.shape == (10, 3, 32, 32)
    assert not torch.equal(first[:5], first[5:])  # the two views of a batch are drawn apart


def test_a_whole_image_crop_is_the_image():
    """Scale 1 and ratio 1 sample the input at its own pixel centres: the identity, to float rounding (the
    bilinear weights of an exact grid point are 1 and 0 up to an ulp of the coordinates)."""
    x = images((3, 2, 9, 9))
    same = resized_crops(x, (1.0, 1.0), (1.0, 1.0), hflip=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, rtol=0, atol=1e-5)


def test_a_quarter_area_crop_magnifies_its_window_twice():
    """A square crop of a quarter of the area is half the side: adjacent output columns sample the input half a
    pixel apart, so a ramp of 1/15 per pixel climbs 0.5/15 per column (the edge columns may meet the border)."""
    ramp = torch.linspace(0, 1, 16).expand(4, 1, 16, 16).contiguous()
    view = resized_crops(ramp, (0.25, 0.25), (1.0, 1.0), hflip=False, generator=torch.Generator().manual_seed(3))
    steps = view[:, 0, 8].diff(dim=1)[:, 1:-1]
    # Bilinear weights of coordinates of size <= 16 in fp32: errors of a few 1e-6.
    torch.testing.assert_close(steps, torch.full_like(steps, 0.5 / 15), rtol=0, atol=1e-5)


def test_flips_mirror_about_half_of_the_images():
    x = images((64, 1, 8, 8))
    views = resized_crops(x, (1.0, 1.0), (1.0, 1.0), hflip=True, generator=torch.Generator().manual_seed(0))
    kept = (views - x).abs().flatten(1).amax(dim=1) < 1e-5
    mirrored = (views - x.flip(-1)).abs().flatten(1).amax(dim=1) < 1e-5
    assert (kept | mirrored).all() and kept.any() and mirrored.any()


def test_hue_rotation_turns_red_into_green_and_leaves_greys():
    """A third of a turn about the grey axis permutes the RGB axes: red -> green -> blue."""
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    grey = torch.full((1, 3, 1, 1), 0.4)
    third = torch.tensor([1 / 3])
    torch.testing.assert_close(rotate_hue(red, third).flatten(), torch.tensor([0.0, 1.0, 0.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(rotate_hue(grey, third), grey, rtol=0, atol=1e-6)


def test_blur_keeps_a_flat_image_and_spreads_a_point():
    flat = torch.full((2, 3, 64, 64), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, (0.1, 2.0), None), flat, rtol=0, atol=1e-6)
    point = torch.zeros(1, 1, 64, 64)
    point[..., 32, 32] = 1.0
    blurred = gaussian_blur(point, (2.0, 2.0), None)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)  # a normalised kernel away from the edges
    # sigma 2 in each direction: the centre keeps 1 / (2 pi sigma^2) of the mass, cut to the 7-tap kernel.
    taps = torch.exp(-(torch.arange(-3.0, 4.0) ** 2) / 8)
    assert blurred[0, 0, 32, 32].item() == pytest.approx((1 / taps.sum()).item() ** 2, rel=1e-5)


def test_embed_is_the_backbones_pooled_output_not_the_projection():
    model = SimCLR(image_shape=(1, 28, 28), projection_dim=32).eval()
    x = images((3, 1, 28, 28))
    features = model.embed(x)
    assert features.shape == (3, 64)  # ResNet-20's last stage is 64 maps wide, pooled
    expected = model.backbone.stages(model.backbone.stem(x)).mean(dim=(2, 3))
    torch.testing.assert_close(features, expected)
    assert model.projector(features).shape == (3, 32)


def test_the_heads_batchnorm_normalises_its_hidden_layer_over_the_batch():
    model = SimCLR(image_shape=(1, 28, 28), projector_batchnorm=True).train()
    assert model.projector[0].bias is None  # the norm's shift takes its place
    hidden = model.projector[:2](torch.randn(256, 64, generator=torch.Generator().manual_seed(0)) * 3 + 5)
    # Training mode normalises by the batch's own statistics: per unit mean 0 (fp32 sums of 256 terms of order 1:
    # error ~1e-6) and biased variance var / (var + eps), 1 within eps / var ~ 1e-5 for these units (var ~ 3).
    torch.testing.assert_close(hidden.mean(0), torch.zeros(512), rtol=0, atol=1e-5)
    torch.testing.assert_close(hidden.var(0, unbiased=False), torch.ones(512), rtol=0, atol=1e-4)


def test_resnet18_backbone_gives_512_features():
    model = SimCLR(image_shape=(3, 32, 32), backbone=lambda shape, n: ResNet(shape, n, depth=18))
    assert model.embed(images((2, 3, 32, 32))).shape == (2, 512)


def test_lars_scales_the_step_of_matrices_by_the_trust_ratio():
    """One step: a matrix moves by lr * eta ||w|| / ||g + wd w|| * (g + wd w) (You et al. 2017, Algorithm 1),
    a bias by lr * g (no decay, no ratio)."""
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    weight.grad, bias.grad = torch.tensor([[0.0, 1.0]]), torch.tensor([2.0])
    optimizer = LARS(
        [{"params": [weight], "weight_decay": 0.5}, {"params": [bias], "weight_decay": 0.0}],
        lr=0.1,
        trust_coefficient=0.01,
    )
    optimizer.step()
    update = torch.tensor([[1.5, 3.0]])  # g + 0.5 w
    ratio = 0.01 * 5.0 / math.sqrt(1.5**2 + 3.0**2)
    torch.testing.assert_close(weight.data, torch.tensor([[3.0, 4.0]]) - 0.1 * ratio * update)
    torch.testing.assert_close(bias.data, torch.tensor([1.0 - 0.1 * 2.0]))


def test_latent_embedding_takes_a_model_that_embeds():
    LatentEmbedding().setup(None, SimCLR(backbone=lambda shape, n: ResNet(shape, n, depth=8)), "fit")


def test_fast_dev_run_through_fit(data_root, fit_in_process):
    result = fit_in_process("--model", "simclr", "--data.root", str(data_root), "--trainer.fast_dev_run", "true", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"knn/acc", "probe/acc", "test/loss"} <= {
        line.split(" = ")[0].strip() for line in result.stdout.splitlines()
    }


def test_the_pixel_floor_is_the_knn_of_the_raw_images(data_root, fit_in_process):
    """`--trainer.max_epochs 0 --model.backbone ...Pixels`: the kNN figure of the images themselves, as the
    kNN code computes it on the tiny MNIST directly."""
    from datamodules.images import MNISTDataModule
    from lightning_modules.representation import knn_accuracy

    result = fit_in_process("--model", "simclr", "--data", "mnist", "--data.root", str(data_root),
                            "--trainer.max_epochs", "0", "--model.backbone",
                            "lightning_modules.self_supervised.simclr.Pixels", "--trainer.logger", "false",
                            "--trainer.callbacks", "[{class_path: callbacks.knn_probe.KNNProbe, init_args: {k: 5}}]",
                            "--trainer.enable_progress_bar", "false")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(line.strip().split(" = ") for line in result.stdout.splitlines() if " = " in line)
    data = MNISTDataModule(root=str(data_root))
    train, test = data.batch("train", len(data.dataset("train"))), data.batch("test", len(data.dataset("test")))
    want = knn_accuracy((train[0].flatten(1), train[1]), (test[0].flatten(1), test[1]), k=5)
    assert float(printed["knn/acc"]) == pytest.approx(want, abs=1e-4)  # printed to 4 decimals


def test_evaluate_gives_the_knn_and_probe_of_the_embedding(data_root) -> None:
    """evaluate() from a checkpoint's model: with the Pixels backbone, the kNN and the linear probe of the raw images
    as the evaluation code computes them on the tiny MNIST directly (L-BFGS from the same start: the same bits)."""
    from datamodules.images import MNISTDataModule
    from lightning_modules.representation import knn_accuracy, linear_probe_accuracy
    from lightning_modules.self_supervised.simclr import Pixels, SimCLR

    data = MNISTDataModule(root=str(data_root))
    data.setup("fit")
    model = SimCLR(backbone=Pixels, image_shape=(1, 28, 28))
    figures = model.evaluate(data, k=5)
    train, test = data.batch("train", len(data.dataset("train"))), data.batch("test", len(data.dataset("test")))
    pixels = (train[0].flatten(1), train[1]), (test[0].flatten(1), test[1])
    assert figures["knn_acc"] == knn_accuracy(*pixels, k=5)
    assert figures["probe_acc"] == linear_probe_accuracy(*pixels)
