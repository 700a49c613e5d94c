"""The image classifiers: backbone shapes and sizes, the loss against independent formulas, the bad-input errors,
backbones by class path on the command line, checkpoints, and every classifier through scripts/fit.py."""

from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.blocks.resnet import ResNet
from lightning_modules.blocks.small_nets import MLP, ConvNet, LeNet5
from lightning_modules.blocks.vit import HybridViT, PixelAttention, ViT
from lightning_modules.checkpoint import load_model
from lightning_modules.classifiers.classifier import ImageClassifier
from lightning_modules.protocols import CONTRACTS, members

BACKBONES = {
    "mlp": MLP,
    "convnet": ConvNet,
    "lenet5": LeNet5,
    "resnet": ResNet,
    "vit": ViT,
    "hybrid_vit": HybridViT,
    "pixel_attention": PixelAttention,
}
CLASSIFIERS = list(BACKBONES)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_maps_images_to_logits(backbone, shape):
    model = ImageClassifier(BACKBONES[backbone], image_shape=shape, num_classes=7)
    logits = model(torch.rand(3, *shape))
    assert logits.shape == (3, 7) and torch.isfinite(logits).all()


def test_lenet5_has_the_papers_parameters():
    # LeCun et al. 1998, sec. II-B: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164 trainable parameters,
    # 60,000 in all; the fixed RBF output is replaced by a Linear 84 -> 10 (850).
    paper = {"C1": 6 * 25 + 6, "S2": 6 * 2, "C3": 6 * (3 * 25 + 1) + 9 * (4 * 25 + 1) + (6 * 25 + 1)}
    paper |= {"S4": 16 * 2, "C5": 120 * (16 * 25 + 1), "F6": 84 * (120 + 1)}
    assert paper == {"C1": 156, "S2": 12, "C3": 1516, "S4": 32, "C5": 48120, "F6": 10164}
    lenet = LeNet5((1, 28, 28), 10)
    assert sum(p.numel() for p in lenet.parameters()) == sum(paper.values()) + 84 * 10 + 10 == 60850
    c3 = lenet.features[4]
    assert sum(p.numel() for p in c3.parameters()) == 1516


def test_lenet5_c3_reads_the_inputs_of_table_1():
    torch.manual_seed(0)
    c3 = LeNet5((1, 28, 28), 10).features[4]
    x = torch.randn(1, 6, 14, 14, requires_grad=True)
    # C3 map 0 reads S2 maps 0, 1, 2 only (Table I, first column block).
    (grad,) = torch.autograd.grad(c3(x)[0, 0].sum(), x)
    assert [bool(grad[0, c].abs().sum() > 0) for c in range(6)] == [True, True, True, False, False, False]


def test_resnet20_has_about_027m_parameters():
    n = sum(p.numel() for p in ResNet((3, 32, 32), 10, depth=20).parameters())
    # Independent count: 3x3 convs without bias, BN (2 per channel), option A shortcuts (no parameters), head.
    stem = 3 * 16 * 9 + 2 * 16
    blocks = sum(3 * (2 * 9 * w * w + 2 * 2 * w) for w in (16, 32, 64)) - 9 * 32 * 32 + 9 * 16 * 32
    blocks += -9 * 64 * 64 + 9 * 32 * 64  # the first conv of stages 2 and 3 widens from the previous stage
    assert n == stem + blocks + 64 * 10 + 10
    assert 0.26e6 < n < 0.28e6  # He et al. 2016, table 6: 0.27M


def test_resnet_depths_and_shortcuts():
    assert len(ResNet((3, 32, 32), 10, depth=56).stages[0]) == 9
    assert len(ResNet((3, 32, 32), 10, depth=18).stages) == 4
    option_b = sum(p.numel() for p in ResNet((3, 32, 32), 10, shortcut="B").parameters())
    assert option_b == 269722 + (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    with pytest.raises(ValueError, match="6n\\+2"):
        ResNet((3, 32, 32), 10, depth=21)


def test_wide_resnet_multiplies_every_stage():
    wide = ResNet((1, 28, 28), 0, width=2)
    assert [stage[-1].conv2.out_channels for stage in wide.stages] == [32, 64, 128]
    assert wide(torch.rand(2, 1, 28, 28)).shape == (2, 128)
    with pytest.raises(ValueError, match="width"):
        ResNet((1, 28, 28), 0, width=0)


def test_default_backbone_is_lenet5_and_no_helper_takes_a_contract_name():
    model = ImageClassifier()
    assert isinstance(model.backbone, LeNet5)
    # A classifier fulfils no method contract: a helper named like one would be mistaken for it by the scripts
    # (the old `evaluate(batch, stage, accuracy)` was). Its one contract attribute is `benchmark_metric`.
    methods = {name for protocol in CONTRACTS for name in members(protocol) if callable(vars(protocol).get(name))}
    assert not methods & set(dir(model))


def test_hybrid_with_no_stem_is_the_plain_vit():
    args = {"patch_size": 7, "dim": 32, "depth": 2, "heads": 2}
    torch.manual_seed(0)
    plain = ImageClassifier(partial(ViT, **args))
    torch.manual_seed(0)
    hybrid = ImageClassifier(partial(HybridViT, stem_depth=0, **args))
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(plain(x), hybrid(x), rtol=0, atol=0)  # the same layers from the same draws
    with_stem = ImageClassifier(partial(HybridViT, **args))
    assert len(with_stem.backbone.stem) == 6


def test_loss_is_cross_entropy_with_label_smoothing():
    torch.manual_seed(0)
    logits, labels = torch.randn(4, 10), torch.tensor([1, 0, 9, 3])
    model = ImageClassifier(MLP, label_smoothing=0.1)
    log_p = logits - logits.exp().sum(1, keepdim=True).log()
    target = torch.full((4, 10), 0.1 / 10).scatter_add(1, labels[:, None], torch.full((4, 1), 0.9))
    torch.testing.assert_close(model.classification_loss(logits, labels), -(target * log_p).sum(1).mean())


def test_mixup_loss_mixes_images_and_labels_alike():
    model = ImageClassifier(MLP, mixup_alpha=0.4)
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6)
    torch.manual_seed(3)
    loss = model.mixup_loss(images, labels)
    torch.manual_seed(3)
    lam = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample()
    partner = torch.randperm(6)
    logits = model(lam * images + (1 - lam) * images[partner])
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[partner])
    torch.testing.assert_close(loss, expected)


def test_orthogonal_parametrization_flag():
    model = ImageClassifier(MLP, orthogonal_pattern=r"backbone\.[13]$")
    for index in (1, 3):
        w = model.backbone[index].weight
        torch.testing.assert_close(w @ w.T, torch.eye(512), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="conv layer"):
        ImageClassifier(ConvNet, orthogonal_pattern="features")
    with pytest.raises(ValueError, match="matches no Linear"):
        ImageClassifier(MLP, orthogonal_pattern="nothing")


@pytest.mark.parametrize(
    ("backbone", "args", "shape", "message"),
    [
        ("vit", {"patch_size": 5}, (1, 28, 28), "not a whole number of 5x5 patches"),
        ("pixel_attention", {}, (1, 64, 64), "image_size 28"),
        ("lenet5", {}, (1, 64, 64), "up to 32x32"),
        ("resnet", {"depth": 21}, (1, 28, 28), "6n\\+2"),
        ("mlp", {"activation": "swish"}, (1, 28, 28), "--model.backbone.activation must be one of relu"),
    ],
)
def test_bad_backbone_choices_are_one_clear_error(backbone, args, shape, message):
    with pytest.raises(ValueError, match=message):
        ImageClassifier(partial(BACKBONES[backbone], **args), image_shape=shape)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fast_dev_run(name, data_root, fit_in_process):
    result = fit_in_process(
        "--model", name, "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.fallback", "false", "--data.batch_size", "8",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc = " in result.stdout


def test_image_size_the_backbone_cannot_take(data_root, fit_in_process):
    result = fit_in_process(
        "--model", "vit", "--trainer.fast_dev_run", "true", "--data.root", str(data_root), "--data.image_size", "30"
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "patch_size" in errors[0], result.stderr[-2000:]


def test_checkpoint_of_a_model_built_in_python_loads_with_weights_only(tmp_path):
    data = DataLoader(TensorDataset(torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))), batch_size=8)
    backbone = partial(ViT, patch_size=4, dim=16, depth=1, heads=2)
    model = ImageClassifier(backbone, image_shape=(1, 8, 8), schedule="cosine", warmup_epochs=0.5)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(model, data)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)  # no code runs while unpickling
    assert saved["hyper_parameters"]["backbone"] == {
        "class_path": "lightning_modules.blocks.vit.ViT",
        "init_args": {"patch_size": 4, "dim": 16, "depth": 1, "heads": 2},
    }
    loaded = ImageClassifier.load_from_checkpoint(path, weights_only=True)
    x = torch.rand(2, 1, 8, 8)
    # The same weights through the same operations on the same CPU: bit for bit.
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_backbone_option_on_the_command_line_and_its_checkpoint(data_root, tmp_path, fit_in_process):
    result = fit_in_process(
        "--model", "resnet", "--model.backbone.depth", "8", "--data.root", str(data_root), "--data.fallback",
        "false", "--data.batch_size", "8", "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--trainer.limit_test_batches", "1", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = tmp_path.glob("runs/resnet/*/checkpoints/last.ckpt")
    model = load_model(path)
    # depth 8 = 6n + 2 with n = 1: one block per stage, where the config's ResNet-20 has three.
    assert isinstance(model.backbone, ResNet) and [len(stage) for stage in model.backbone.stages] == [1, 1, 1]
    assert model.hparams.backbone == {
        "class_path": "lightning_modules.blocks.resnet.ResNet",
        "init_args": {"depth": 8, "shortcut": "A", "width": 1},
    }
    typo = fit_in_process("--model", "resnet", "--model.backbone.init_args.dept", "5")
    errors = [line for line in typo.stderr.splitlines() if line.strip()]
    assert typo.returncode == 2 and len(errors) == 1, typo.stderr[-2000:]
    assert errors[0].startswith("fit.py: error: --model.backbone.init_args.dept: Option 'dept' is not accepted")


def test_channels_last_keeps_the_logits_and_the_checkpoint():
    torch.manual_seed(0)
    plain = ImageClassifier(partial(ResNet, depth=8), image_shape=(1, 28, 28), num_classes=10).eval()
    nhwc = ImageClassifier(partial(ResNet, depth=8), image_shape=(1, 28, 28), num_classes=10, channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    nhwc.eval()
    kernel = next(p for p in nhwc.parameters() if p.dim() == 4)
    assert kernel.is_contiguous(memory_format=torch.channels_last)
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        # The same sums in another memory order: oneDNN may add a kernel's products in another order, so the
        # logits agree to float32 rounding of sums of a few hundred terms (relative 1e-4 covers it with room).
        torch.testing.assert_close(nhwc(images), plain(images), rtol=1e-4, atol=1e-5)
    # Its weights load into a plain model: the memory order is not part of the state.
    ImageClassifier(partial(ResNet, depth=8), image_shape=(1, 28, 28), num_classes=10).load_state_dict(
        nhwc.state_dict()
    )
