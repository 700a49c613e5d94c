"""DataModules by short name: the registry that scripts/fit.py reads for `--data NAME`."""

from datamodules.environments import GymDataModule
from datamodules.image_graphs import ImageGraphDataModule
from datamodules.images import (
    CelebADataModule,
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    MNISTDataModule,
)
from datamodules.sources import DataError
from datamodules.text import TextDataModule
from datamodules.toy2d import Toy2DDataModule

DATAMODULES = {
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "celeba": CelebADataModule,
    "digits": DigitsDataModule,
    "toy2d": Toy2DDataModule,
    "text": TextDataModule,
    "gym": GymDataModule,
    "image_graphs": ImageGraphDataModule,
}

__all__ = ["DATAMODULES", "DataError", "ImageDataModule", *(c.__name__ for c in DATAMODULES.values())]
