"""The offline FID: classifier features, the Frechet distance through torchmetrics, the cache, the errors."""

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import REPO
from lightning_modules.autoencoders.vae import VAE
from lightning_modules.blocks.small_nets import ConvNet, LeNet5
from lightning_modules.classifiers.classifier import ImageClassifier
from lightning_modules.metrics import ClassifierFeatures, ClassifierFID, fid_floor


def load_script():
    spec = importlib.util.spec_from_file_location("fid_script", REPO / "scripts" / "fid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_checkpoint(model: L.LightningModule, path: Path, class_path: str) -> Path:
    """A checkpoint as scripts/fit.py writes it: Lightning's own, with the class LightningCLI records."""
    model.hparams["_class_path"] = class_path
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture
def lenet_checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = ImageClassifier(LeNet5, image_shape=(1, 28, 28), num_classes=10)
    return save_checkpoint(model, tmp_path / "lenet5.ckpt", "lightning_modules.classifiers.classifier.ImageClassifier")


def blobs(n: int, seed: int) -> torch.Tensor:
    """Images in [0, 1] with some structure: a bright square at a random place on a dim random field."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 28, 28, generator=generator) * 0.3
    corners = torch.randint(0, 20, (n, 2), generator=generator)
    for image, (top, left) in zip(images, corners.tolist(), strict=True):
        image[:, top : top + 8, left : left + 8] = 1.0
    return images


@pytest.mark.parametrize("backbone", ["lenet5", "convnet"])
def test_features_are_the_input_of_the_last_linear(backbone):
    torch.manual_seed(0)
    classifier = ImageClassifier(
        {"lenet5": LeNet5, "convnet": ConvNet}[backbone], image_shape=(1, 28, 28), num_classes=10
    )
    state = torch.get_rng_state()
    features = ClassifierFeatures(classifier)
    assert torch.equal(torch.get_rng_state(), state)  # finding the layer draws nothing from the global stream
    head = classifier.backbone.head
    assert features.last_linear is head[-1]
    assert features.num_features == head[-1].in_features == (84 if backbone == "lenet5" else 128)
    images = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        if backbone == "lenet5":
            manual = head[:-1](classifier.backbone.features(torch.nn.functional.pad(images, (2, 2, 2, 2))))
        else:
            manual = head[:-1](classifier.backbone.features(images))
    torch.testing.assert_close(features(images), manual)


def test_features_resize_and_map_channels():
    torch.manual_seed(0)
    features = ClassifierFeatures(ImageClassifier(LeNet5, image_shape=(1, 28, 28), num_classes=10))
    assert features(torch.rand(3, 3, 32, 32)).shape == (3, 84)
    grey = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(features(grey.expand(-1, 3, -1, -1)), features(grey), atol=1e-3, rtol=0)  # luma weights


def test_fid_is_zero_against_itself_and_grows_with_noise(lenet_checkpoint):
    fid = ClassifierFID(lenet_checkpoint, batch_size=64)
    real = blobs(300, seed=0)
    fid.set_real(real)
    scores = [fid.score(real)["fid"]]
    for std in (0.05, 0.15, 0.4):
        noisy = (real + std * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        scores.append(fid.score(noisy)["fid"])
    assert abs(scores[0]) < 1e-3 * scores[1]
    assert scores == sorted(scores) and scores[1] > 0


def test_cache_round_trip_is_reused(lenet_checkpoint):
    real, fake = blobs(200, seed=0), blobs(200, seed=1)
    fid = ClassifierFID(lenet_checkpoint)
    fid.set_real(real, cache_key="blobs")
    assert (lenet_checkpoint.parent / "lenet5.ckpt.fid-blobs.pt").is_file()
    first = fid.score(fake)

    again = ClassifierFID(lenet_checkpoint)
    seen = []
    again.metrics["fid"].inception.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    again.set_real(torch.zeros(0), cache_key="blobs")  # the images are not looked at: the cache answers
    assert seen == []
    assert again.score(fake) == pytest.approx(first, rel=1e-6)
    assert seen == [200]


def test_cache_of_another_classifier_is_not_used(lenet_checkpoint, tmp_path):
    ClassifierFID(lenet_checkpoint).set_real(blobs(50, seed=0), cache_key="blobs")
    torch.manual_seed(1)
    other = ImageClassifier(LeNet5, image_shape=(1, 28, 28), num_classes=10)
    save_checkpoint(other, lenet_checkpoint, "lightning_modules.classifiers.classifier.ImageClassifier")
    with pytest.raises(ValueError, match="at least 2 images"):
        ClassifierFID(lenet_checkpoint).set_real(torch.zeros(0), cache_key="blobs")


def test_floor_scores_a_seeded_draw_of_training_images(lenet_checkpoint):
    fid = ClassifierFID(lenet_checkpoint)
    fid.set_real(blobs(100, seed=0))
    train = blobs(150, seed=1)
    assert fid_floor(fid, train, n=50, seed=3) == fid_floor(fid, train, n=50, seed=3)
    with pytest.raises(ValueError, match="2 <= n <= 150"):
        fid_floor(fid, train, n=151)


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        ClassifierFID(tmp_path / "nope.ckpt")
    assert "nope.ckpt not found" in one_line(error) and "--model lenet5" in one_line(error)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    vae = VAE(image_shape=(1, 8, 8), hidden_dim=16, latent_dim=2)
    path = save_checkpoint(vae, tmp_path / "vae.ckpt", "lightning_modules.autoencoders.vae.VAE")
    with pytest.raises(ValueError) as error:
        ClassifierFeatures.from_checkpoint(path)
    assert "holds a VAE, not an ImageClassifier" in one_line(error)


def test_bad_images_and_order_of_calls(lenet_checkpoint, tmp_path):
    fid = ClassifierFID(lenet_checkpoint)
    with pytest.raises(ValueError, match="call set_real"):
        fid.score(blobs(4, seed=0))
    with pytest.raises(ValueError) as error:
        fid.set_real(blobs(4, seed=0) * 2 - 1)
    assert "(x + 1) / 2" in one_line(error)
    with pytest.raises(ValueError, match="cache_key"):
        fid.set_real(blobs(4, seed=0), cache_key="../elsewhere")
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        ClassifierFID(lenet_checkpoint, inception_weights_path=tmp_path / "pt_inception.pth")


def test_floor_script_on_tiny_mnist(lenet_checkpoint, data_root, capsys):
    fid_script = load_script()
    args = ["--classifier", str(lenet_checkpoint), "--data", "mnist", "--data.root", str(data_root)]
    assert fid_script.main([*args, "--n", "100", "20"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "FID floor on mnist: n training images against the 40 test images"
    assert lines[1].startswith("  n = 100: fid = ") and lines[2].startswith("  n = 20: fid = ")


def test_floor_script_errors_are_one_line(lenet_checkpoint, data_root, empty_root, capsys):
    fid_script = load_script()
    assert (
        fid_script.main(["--classifier", str(lenet_checkpoint), "--data", "mnist", "--data.root", str(empty_root)]) == 2
    )
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "MNIST not found" in error and "--data.root" in error
    args = ["--classifier", str(lenet_checkpoint), "--data", "mnist", "--data.root", str(data_root), "--n", "1000"]
    assert fid_script.main(args) == 2
    assert "2 <= n <= 108" in capsys.readouterr().err


class Replay(L.LightningModule):
    """A `Samples` and `Encodes` model without a network: `sample` gives the test images themselves or blobs,
    `decode(encode(x))` is x plus a known offset."""

    def __init__(self, real: torch.Tensor, offset: float = 0.0) -> None:
        super().__init__()
        self.real, self.offset = real, offset

    def test_step(self, batch, batch_idx: int) -> None:
        pass

    def sample(self, n: int, source: str = "real") -> torch.Tensor:
        return self.real[:n] if source == "real" else blobs(n, seed=0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.reshape(-1, *self.real.shape[1:]) + self.offset


def test_the_scoring_callbacks_log_what_they_measure(lenet_checkpoint, data_root):
    from callbacks.inversion_error import InversionError
    from callbacks.sample_fid import SampleFID
    from datamodules import MNISTDataModule

    datamodule = MNISTDataModule(root=str(data_root), batch_size=8)
    datamodule.setup("test")
    real = datamodule.batch("test")[0]
    model = Replay(real, offset=0.1)
    samplers = {"real": {"source": "real"}, "blobs": {"source": "blobs"}}
    callbacks = [SampleFID(str(lenet_checkpoint), n=len(real), samplers=samplers), InversionError(n=4)]
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    results = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    # The test split scored against itself: the Frechet distance of identical statistics, 0 up to the float32
    # rounding (relative ~1e-7) of the eigenvalues of covariances whose traces are of order 1-10.
    assert results["test/fid_real"] == pytest.approx(0.0, abs=1e-4)
    # Other images against the whole test split: what ClassifierFID gives directly, to the same rounding.
    direct = ClassifierFID(lenet_checkpoint)
    direct.set_real(real)
    assert results["test/fid_blobs"] == pytest.approx(direct.score(blobs(len(real), seed=0))["fid"], rel=1e-5)
    assert results["test/fid_blobs"] > 1.0
    # decode(encode(x)) = x + 0.1 everywhere: a mean squared error of 0.01, to float32 rounding.
    assert results["test/inversion_mse"] == pytest.approx(0.01, rel=1e-5)


def test_the_scoring_callbacks_refuse_models_without_the_contract(lenet_checkpoint, tmp_path):
    from callbacks.inversion_error import InversionError
    from callbacks.sample_fid import SampleFID

    model = L.LightningModule()  # samples nothing, encodes nothing
    with pytest.raises(ValueError, match=r"LightningModule cannot be used for SampleFID: it has no sample\(\)"):
        SampleFID(str(lenet_checkpoint)).setup(L.Trainer(logger=False), model, "test")
    with pytest.raises(ValueError, match=r"it has no encode\(\), decode\(\)"):
        InversionError().setup(L.Trainer(logger=False), model, "test")
    with pytest.raises(FileNotFoundError, match="nope.ckpt not found; train one"):
        SampleFID(str(tmp_path / "nope.ckpt")).setup(L.Trainer(logger=False), Replay(torch.rand(2, 1, 28, 28)), "test")
