"""Image datasets: read once through torchvision into uint8 tensors, normalised and augmented per batch
on the batch's device. Every batch is (float32 images in [0, 1] of shape (B, C, H, W), int64 labels)."""

import pickle
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from datamodules.batches import InMemoryDataModule, TensorBatches, random_crop, random_hflip
from datamodules.sources import (
    DataError,
    check_idx,
    check_loader_options,
    extract,
    fit_shape,
    load_digits_uint8,
    quiet_download,
    resolve_root,
    warn_fallback,
)

EMBEDDED = "embedded_digits"


class ImageDataModule(InMemoryDataModule):
    """Base of the image DataModules. A subclass says where its files live and how to read them."""

    name: ClassVar[str]
    native_channels: ClassVar[int]
    native_size: ClassVar[int]
    classes: ClassVar[int | None] = 10

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        image_size: int | None = None,
        channels: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        hflip: bool = False,
        crop_padding: int = 0,
        download: bool = True,
        fallback: bool = True,
        shuffle_seed: int = 0,
    ) -> None:
        """
        Args:
            root: data folder; default $LIGHTNING_ZOO_DATA, else ./data.
            batch_size: images per batch (per device).
            num_workers: DataLoader worker processes; 0 is right for in-memory tensors.
            image_size: side length to resize to once at load time; default the dataset's own.
            channels: 1 or 3; greys are repeated, colours averaged; default the dataset's own.
            val_fraction: share of the official training set held out for validation.
            split_seed: seed of the train/validation split (fixed, so runs compare).
            hflip: random left-right flips of training batches.
            crop_padding: random crops after zero padding by this many pixels (training batches).
            download: fetch missing files with torchvision.
            fallback: when the files are missing and cannot be downloaded, train on the embedded
                scikit-learn digits instead (with a warning); false makes that an error.
            shuffle_seed: the seed of the training order (fit.py's --seed sets it); the order of epoch e is
                drawn from shuffle_seed + e.
        """
        super().__init__()
        check_loader_options("image", num_workers, batch_size=batch_size)
        if image_size is not None and image_size < 1:
            raise DataError(f"--data.image_size must be a positive number of pixels, got {image_size}")
        if channels not in (None, 1, 3):
            raise DataError(f"--data.channels must be 1 or 3, got {channels}")
        if not 0.0 <= val_fraction < 1.0:
            raise DataError(f"--data.val_fraction must be in [0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.root = resolve_root(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle_seed = shuffle_seed
        self.data_source: str | None = None
        self.train_set = self.val_set = self.test_set = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this module yields; linked into models by scripts/fit.py."""
        channels = self.hparams.channels or self.native_channels
        size = self.hparams.image_size or self.native_size
        return (channels, size, size)

    @property
    def num_classes(self) -> int | None:
        return self.classes

    # --- what a subclass provides -------------------------------------------------------------
    def folder(self) -> Path:
        raise NotImplementedError

    def expected_files(self) -> list[str]:
        raise NotImplementedError

    def fetch(self) -> None:
        """Download the files into `folder()`."""
        raise NotImplementedError

    def read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The official train or test split as uint8 (N, C, H, W) images and int64 labels."""
        raise NotImplementedError

    def archives(self) -> dict[Path, Path]:
        """Downloaded archives that unpack into the expected files, each with the folder it unpacks into."""
        return {}

    def read_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images `read` returns: the dataset's own."""
        return (self.native_channels, self.native_size, self.native_size)

    # --- Lightning hooks ----------------------------------------------------------------------
    def files_present(self) -> bool:
        return all((self.folder() / name).exists() for name in self.expected_files())

    def prepare_data(self) -> None:
        self.unpack()
        if not self.files_present() and self.hparams.download:
            quiet_download(self.fetch)

    def unpack(self) -> None:
        """Unpack the archives already here, so that a damaged one is reported as such, not as missing files."""
        if not self.files_present():
            for archive, destination in self.archives().items():
                if archive.exists():
                    extract(archive, destination)

    def load(self) -> tuple[tuple, tuple, str]:
        """(train images, labels), (test images, labels) and the name of where they came from."""
        self.unpack()
        if self.files_present():
            return self._read_checked(train=True), self._read_checked(train=False), self.name
        if self.hparams.fallback:
            warn_fallback(self.name, self.folder(), ", ".join(self.expected_files()))
            return *embedded_digits_split(), EMBEDDED
        raise DataError(
            f"{self.name} not found: expected {', '.join(self.expected_files())} in {self.folder()}; "
            "put the files there (or pass --data.root DIR / set LIGHTNING_ZOO_DATA), "
            "or drop --data.fallback false to train on the embedded digits"
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test, self.data_source = self.load()
        channels, size, _ = self.image_shape
        train = (fit_shape(train[0], channels, size), train[1])
        test = (fit_shape(test[0], channels, size), test[1])
        n_val = round(len(train[0]) * self.hparams.val_fraction)
        order = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val_idx, train_idx = order[:n_val], order[n_val:]
        self.train_set = TensorBatches(train[0][train_idx], train[1][train_idx])
        self.val_set = TensorBatches(train[0][val_idx], train[1][val_idx])
        self.test_set = TensorBatches(*test)
        # Logged with the hyper-parameters, so a fallback run can never pass for a real one.
        self.save_hyperparameters({**self.hparams, "data_source": self.data_source})

    def _read_checked(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            images, labels = self.read(train)
        except DataError:
            raise
        except Exception as error:  # noqa: BLE001 - every reader failure means a damaged file
            # `from None`: the scripts print the innermost error of a chain, which would be the reader's own.
            raise DataError(
                f"{self.name} files in {self.folder()} are truncated or corrupt "
                f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "delete them and download again"
            ) from None
        split = "training" if train else "test"
        fix = "delete them and download again"
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(labels):
            raise DataError(f"{self.name} {split} files in {self.folder()} hold malformed arrays; {fix}")
        if tuple(images.shape[1:]) != self.read_shape():
            raise DataError(
                f"{self.name} {split} images in {self.folder()} are {tuple(images.shape[1:])} (C, H, W), not the "
                f"dataset's {self.read_shape()}; {fix}"
            )
        if self.classes is not None and len(labels) and (labels.min() < 0 or labels.max() >= self.classes):
            raise DataError(
                f"{self.name} {split} labels in {self.folder()} run from {int(labels.min())} to {int(labels.max())}, outside "
                f"the {self.classes} classes 0..{self.classes - 1}; {fix}"
            )
        return images, labels

    def prepare_batch(self, batch, augment: bool):
        images, labels = batch
        images = images.float().div_(255.0)
        if augment:
            if self.hparams.hflip:
                images = random_hflip(images)
            images = random_crop(images, self.hparams.crop_padding)
        return images, labels


def embedded_digits_split(test_fraction: float = 0.2) -> tuple[tuple, tuple]:
    """The scikit-learn digits split into a fixed train and test part."""
    images, labels = load_digits_uint8()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = round(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (images[train], labels[train]), (images[test], labels[test])


class DigitsDataModule(ImageDataModule):
    """The 1,797 UCI 8x8 handwritten digits embedded in scikit-learn: always available, no files."""

    name = "digits"
    native_channels, native_size = 1, 8

    def prepare_data(self) -> None:
        pass

    def load(self) -> tuple[tuple, tuple, str]:
        return *embedded_digits_split(), EMBEDDED


class MNISTDataModule(ImageDataModule):
    """MNIST (LeCun et al. 1998): 60,000 + 10,000 28x28 grey digits, in `<root>/MNIST/raw`."""

    name = "MNIST"
    native_channels, native_size = 1, 28
    torchvision_class = datasets.MNIST

    def folder(self) -> Path:
        return self.root / self.torchvision_class.__name__ / "raw"

    def expected_files(self) -> list[str]:
        return [Path(url).stem for url, _ in self.torchvision_class.resources]

    def fetch(self) -> None:
        self.torchvision_class(self.root, download=True)

    def archives(self) -> dict[Path, Path]:
        return {self.folder() / f"{name}.gz": self.folder() for name in self.expected_files()}

    def read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "train" if train else "t10k"
        check_idx(self.folder() / f"{prefix}-images-idx3-ubyte", ndim=3)
        check_idx(self.folder() / f"{prefix}-labels-idx1-ubyte", ndim=1)
        data = self.torchvision_class(self.root, train=train, download=False)
        return data.data.unsqueeze(1), data.targets.long()


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (Xiao et al. 2017): MNIST's format, ten kinds of clothing."""

    name = "FashionMNIST"
    torchvision_class = datasets.FashionMNIST


class _CIFAR10Files(datasets.CIFAR10):
    """torchvision's CIFAR-10 without the md5 pass over every batch file at each start: a damaged file
    still fails, when it is unpickled."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).exists() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
            self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (Krizhevsky 2009): 50,000 + 10,000 32x32 colour images, python pickle batches in
    `<root>/cifar-10-batches-py`."""

    name = "CIFAR10"
    native_channels, native_size = 3, 32

    def folder(self) -> Path:
        return self.root / datasets.CIFAR10.base_folder

    def expected_files(self) -> list[str]:
        c = datasets.CIFAR10
        return [name for name, _ in c.train_list + c.test_list] + [c.meta["filename"]]

    def fetch(self) -> None:
        datasets.CIFAR10(self.root, download=True)

    def archives(self) -> dict[Path, Path]:
        return {self.root / datasets.CIFAR10.filename: self.root}  # the tar.gz holds the folder itself

    def read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        data = _CIFAR10Files(self.root, train=train, download=False)
        return torch.from_numpy(data.data).permute(0, 3, 1, 2), torch.tensor(data.targets).long()


class _CelebAFiles(datasets.CelebA):
    """torchvision's CelebA, checking that its files exist rather than their md5 at every start, and that the
    attribute file holds only -1 and 1 (torchvision maps them to 0 and 1 and would turn a 0 or a 2 into a
    label without a word)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        raw = self._load_csv("list_attr_celeba.txt", header=1).data
        if raw.numel() and not torch.isin(raw, torch.tensor([-1, 1])).all():
            odd = sorted(set(raw[~torch.isin(raw, torch.tensor([-1, 1]))].tolist()))[:3]
            raise DataError(
                f"CelebA attributes in {Path(self.root) / self.base_folder / 'list_attr_celeba.txt'} must be -1 "
                f"or 1, found {', '.join(map(str, odd))}; delete the file and download it again"
            )

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return (folder / "img_align_celeba").is_dir() and all(
            (folder / name).exists() for _, _, name in self.file_list if not name.endswith((".zip", ".7z"))
        )


class CelebADataModule(ImageDataModule):
    """CelebA aligned faces (Liu et al. 2015), centre-cropped to a square and resized once; labels are
    the 40 binary attributes, as an int64 vector per image. Files in `<root>/celeba`."""

    name = "CelebA"
    native_channels, native_size = 3, 64
    classes = None

    def folder(self) -> Path:
        return self.root / datasets.CelebA.base_folder

    def expected_files(self) -> list[str]:
        names = [name for _, _, name in datasets.CelebA.file_list if not name.endswith(".zip")]
        return ["img_align_celeba", *names]

    def fetch(self) -> None:
        datasets.CelebA(self.root, download=True)

    def read_shape(self) -> tuple[int, int, int]:
        return (self.native_channels, self.image_shape[1], self.image_shape[1])  # resized while decoding

    def read(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.image_shape[1]
        transform = v2.Compose([v2.PILToTensor(), v2.Lambda(_centre_square), v2.Resize(size, antialias=True)])
        data = _CelebAFiles(self.root, split="train" if train else "test", target_type="attr", transform=transform)
        images, labels = [], []
        # Decoded once, in parallel workers; after this everything lives in memory.
        for x, y in DataLoader(data, batch_size=256, num_workers=self.num_workers):
            images.append(x)
            labels.append(y)
        return torch.cat(images), torch.cat(labels).long()


def _centre_square(image: torch.Tensor) -> torch.Tensor:
    return v2.functional.center_crop(image, min(image.shape[-2:]))
