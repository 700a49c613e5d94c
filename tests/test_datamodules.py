"""The DataModules on tiny files in the real formats: shapes, ranges, splits, fallback and bad files."""

import warnings

import numpy as np
import pytest
import torch

from conftest import CELEBA_SPLITS, N_TEST, N_TRAIN, write_idx
from datamodules import (
    DATAMODULES,
    CelebADataModule,
    CIFAR10DataModule,
    DataError,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    TextDataModule,
    Toy2DDataModule,
)


def ready(datamodule):
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def first_batch(datamodule, loader: str = "train_dataloader"):
    batch = next(iter(getattr(datamodule, loader)()))
    return datamodule.on_after_batch_transfer(batch, 0)


IMAGE_MODULES = [
    (MNISTDataModule, (1, 28, 28), N_TRAIN, N_TEST),
    (FashionMNISTDataModule, (1, 28, 28), N_TRAIN, N_TEST),
    (CIFAR10DataModule, (3, 32, 32), N_TRAIN, N_TEST),
    (CelebADataModule, (3, 64, 64), CELEBA_SPLITS[0], CELEBA_SPLITS[2]),
]


@pytest.mark.parametrize(("cls", "shape", "n_train", "n_test"), IMAGE_MODULES)
def test_image_datamodule_reads_real_format(data_root, cls, shape, n_train, n_test):
    dm = ready(cls(root=str(data_root), batch_size=4, val_fraction=0.25, fallback=False, download=False))
    assert dm.data_source == dm.name
    assert dm.image_shape == shape
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (n_train - n_train // 4, n_train // 4, n_test)
    x, y = first_batch(dm)
    assert x.shape == (4, *shape) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert y.dtype == torch.int64 and len(y) == 4
    assert dm.hparams.data_source == dm.name


def test_mnist_pixels_and_labels_are_the_files_values(tmp_path):
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = torch.arange(10 * 28 * 28).remainder(256).to(torch.uint8).reshape(10, 28, 28).numpy()
    for prefix in ("train", "t10k"):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", torch.arange(10).numpy())
    dm = ready(MNISTDataModule(root=str(root), val_fraction=0.0, fallback=False, download=False))
    x, y = dm.test_set.tensors
    assert torch.equal(x[:, 0], torch.from_numpy(images))
    assert torch.equal(y, torch.arange(10))


def test_train_val_split_is_fixed_and_disjoint(data_root):
    make = lambda seed: ready(MNISTDataModule(root=str(data_root), val_fraction=0.25, split_seed=seed))  # noqa: E731
    a, b, c = make(0), make(0), make(1)
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])
    train_rows = {bytes(t.numpy()) for t in a.train_set.tensors[0]}
    assert not any(bytes(t.numpy()) in train_rows for t in a.val_set.tensors[0])


def test_shuffle_depends_only_on_epoch(data_root):
    dm = ready(MNISTDataModule(root=str(data_root), batch_size=8))
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(3)
    first = list(loader.sampler)
    loader.sampler.set_epoch(4)
    assert first != list(loader.sampler)
    other = dm.train_dataloader()
    other.sampler.set_epoch(3)
    assert first == list(other.sampler)


def test_image_size_and_channels_are_honoured(data_root):
    dm = ready(MNISTDataModule(root=str(data_root), image_size=32, channels=3, batch_size=2))
    x, _ = first_batch(dm)
    assert dm.image_shape == (3, 32, 32) and x.shape == (2, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])  # grey repeated
    grey = ready(CIFAR10DataModule(root=str(data_root), channels=1, batch_size=2))
    assert first_batch(grey)[0].shape == (2, 1, 32, 32)


def test_augmentation_only_in_training(data_root):
    class Training:
        training = True

    dm = ready(CIFAR10DataModule(root=str(data_root), hflip=True, crop_padding=4, batch_size=64))
    batch = next(iter(dm.train_dataloader()))
    plain = dm.on_after_batch_transfer(batch, 0)[0]
    dm.trainer = Training()
    torch.manual_seed(0)
    augmented = dm.on_after_batch_transfer(batch, 0)[0]
    assert augmented.shape == plain.shape
    assert not torch.equal(augmented, plain)
    # Every augmented image is a flipped or unflipped shift of its original: its pixels are a subset.
    assert (augmented == 0).float().mean() > (plain == 0).float().mean()


def test_random_crop_is_a_shift():
    from datamodules.batches import random_crop

    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    torch.manual_seed(1)
    cropped = random_crop(images, 2)
    for original, crop in zip(images, cropped, strict=True):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        assert any(torch.equal(padded[:, dy : dy + 6, dx : dx + 6], crop) for dy in range(5) for dx in range(5))


def test_digits_is_embedded_and_always_available():
    dm = ready(DigitsDataModule(batch_size=16))
    x, y = first_batch(dm)
    assert x.shape == (16, 1, 8, 8) and dm.data_source == "embedded_digits"
    from sklearn.datasets import load_digits

    splits = (dm.train_set, dm.val_set, dm.test_set)
    labels = torch.cat([split.tensors[1] for split in splits])
    # The splits hold scikit-learn's 1797 digits, each once: the same label counts.
    assert torch.equal(torch.bincount(labels), torch.from_numpy(np.bincount(load_digits().target)))
    assert set(y.tolist()) <= set(range(10))


def test_missing_files_fall_back_with_one_warning(empty_root):
    dm = MNISTDataModule(root=str(empty_root), download=False, batch_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ready(dm)
    fallback = [w for w in caught if "FALLBACK" in str(w.message)]
    assert len(fallback) == 1 and "\n" not in str(fallback[0].message)
    assert str(empty_root) in str(fallback[0].message)
    assert dm.data_source == "embedded_digits" and dm.hparams.data_source == "embedded_digits"
    x, _ = first_batch(dm)
    assert x.shape == (8, 1, 28, 28)  # resized to what the model asked for


def test_root_from_environment(data_root, monkeypatch):
    monkeypatch.setenv("LIGHTNING_ZOO_DATA", str(data_root))
    assert ready(MNISTDataModule(fallback=False, download=False)).data_source == "MNIST"


def test_missing_files_without_fallback_is_a_clear_error(empty_root):
    dm = MNISTDataModule(root=str(empty_root), download=False, fallback=False)
    with pytest.raises(DataError, match=r"MNIST not found: expected train-images-idx3-ubyte.*MNIST/raw"):
        ready(dm)


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_truncated_mnist_file_is_a_clear_error(data_root, name):
    path = data_root / "MNIST" / "raw" / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        ready(MNISTDataModule(root=str(data_root), download=False))


def test_corrupt_cifar_batch_is_a_clear_error(data_root):
    (data_root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="CIFAR10 files .* truncated or corrupt"):
        ready(CIFAR10DataModule(root=str(data_root), download=False))


@pytest.mark.parametrize("bad", [{"channels": 2}, {"image_size": 0}, {"val_fraction": 1.5}])
def test_bad_image_options(bad):
    with pytest.raises(DataError, match="--data."):
        MNISTDataModule(**bad)


def test_text_windows_targets_are_shifted_inputs(data_root):
    dm = ready(TextDataModule(root=str(data_root), block_size=16, batch_size=4))
    x, y = first_batch(dm)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert dm.decode(dm.encode("Winston")) == "Winston"
    assert dm.vocab_size == len(set(dm.text))


def test_text_split_is_the_tail_and_does_not_overlap(data_root):
    dm = ready(TextDataModule(root=str(data_root), block_size=8, val_fraction=0.1))
    n_train = int(len(dm.text) * 0.9)
    train_end = int(dm.train_set.starts[-1]) + 8 + 1
    assert train_end <= n_train
    assert torch.equal(dm.val_set.ids, dm.encode(dm.text[n_train:]))


def test_text_vocabulary_in_state_dict(data_root):
    dm = TextDataModule(root=str(data_root))
    state = dm.state_dict()
    assert state == {"vocab": "".join(sorted(set(dm.text)))}
    dm.load_state_dict(state)
    with pytest.raises(DataError, match="another vocabulary"):
        dm.load_state_dict({"vocab": "abc"})


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "too few"), (b"\xff\xfe caf\xe9 \x80\x81", "not UTF-8")],
)
def test_bad_text_files(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        TextDataModule(path=str(path)).vocab_size  # noqa: B018


def test_text_falls_back_to_stdlib_but_not_for_an_explicit_path(empty_root, tmp_path):
    with pytest.warns(UserWarning, match="FALLBACK"):
        dm = ready(TextDataModule(root=str(empty_root), block_size=32))
    assert dm.data_source == "embedded_stdlib" and "def " in dm.text
    with pytest.raises(DataError, match="not found"):
        TextDataModule(path=str(tmp_path / "missing.txt")).vocab  # noqa: B018
    with pytest.raises(DataError, match="not found"):
        TextDataModule(root=str(empty_root), fallback=False).vocab  # noqa: B018


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "8gaussians", "checkerboard", "rings", "two_gaussians"])
def test_toy2d(name):
    a = ready(Toy2DDataModule(name=name, n_train=500, batch_size=100))
    b = ready(Toy2DDataModule(name=name, n_train=500, batch_size=100))
    x, y = first_batch(a)
    assert x.shape == (100, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert not torch.equal(a.train_set.tensors[0][:100], a.test_set.tensors[0][:100])
    assert x.abs().max() < 6


def test_registry_names():
    assert {"mnist", "fashion_mnist", "cifar10", "celeba", "digits", "toy2d", "text"} <= set(DATAMODULES)


def test_relative_text_path_is_found_in_the_root(data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dm = TextDataModule(path="text/1984.txt", root=str(data_root))
    assert dm.text.startswith("It was")
    assert dm.data_source == str(data_root / "text" / "1984.txt")


def test_batch_hands_out_a_split_as_a_test_step_sees_it(data_root):
    class Training:
        training = True

    dm = ready(CIFAR10DataModule(root=str(data_root), hflip=True, crop_padding=4, batch_size=16))
    dm.trainer = Training()  # even inside training, batch() never augments
    images, labels = dm.batch("test", 37)
    raw_images, raw_labels = dm.test_set.tensors
    # uint8 / 255 is exact in float32 up to one rounding of the quotient: compare exactly.
    assert torch.equal(images, raw_images[:37].float() / 255) and torch.equal(labels, raw_labels[:37])
    assert len(dm.batch("train")[0]) == 16  # default: one loader batch
