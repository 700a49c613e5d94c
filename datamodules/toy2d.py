"""Toy 2-D distributions for density models and samplers: generated, seeded, batches of (B, 2) points."""

import math
from typing import Literal

import torch

from datamodules.batches import InMemoryDataModule, TensorBatches
from datamodules.sources import check_loader_options

ToyName = Literal["moons", "swiss_roll", "8gaussians", "checkerboard", "rings", "two_gaussians"]
# "two_gaussians": the unequal mixture of Song & Ermon (2019, Fig. 2), 4/5 N((5, 5), I) + 1/5 N((-5, -5), I), halved
# to fit the other distributions' square: weight 0.8 at (2.5, 2.5), 0.2 at (-2.5, -2.5), standard deviation 0.5.
TWO_GAUSSIANS_MEANS = ((2.5, 2.5), (-2.5, -2.5))
TWO_GAUSSIANS_WEIGHTS = (0.8, 0.2)
TWO_GAUSSIANS_STD = 0.5


def sample_toy2d(name: ToyName, n: int, generator: torch.Generator, noise: float | None = None):
    """`n` points of the named distribution (float32 (n, 2), roughly within [-4, 4]^2) and the index of
    the component each came from (int64; 0 where the distribution has no parts)."""
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    randn = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    if name == "moons":
        label = torch.randint(0, 2, (n,), generator=generator)
        t = math.pi * rand(n)
        upper = torch.stack([torch.cos(t), torch.sin(t)], 1)
        lower = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1)
        x = torch.where(label[:, None] == 0, upper, lower) * 2 - torch.tensor([1.0, 0.5])
        std = 0.1 if noise is None else noise
    elif name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * rand(n))
        x, label = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 4, torch.zeros(n, dtype=torch.long)
        std = 0.1 if noise is None else noise
    elif name == "8gaussians":
        label = torch.randint(0, 8, (n,), generator=generator)
        angle = label * (math.pi / 4)
        x, std = 2.5 * torch.stack([torch.cos(angle), torch.sin(angle)], 1), 0.15 if noise is None else noise
    elif name == "checkerboard":
        # Uniform on the 8 dark squares of a 4x4 board of side 1 spanning [-2, 2]^2, scaled to [-4, 4]^2.
        column = rand(n) * 4 - 2
        row = rand(n) - 2 * torch.randint(0, 2, (n,), generator=generator) + torch.floor(column) % 2
        x, label, std = 2 * torch.stack([column, row], 1), torch.zeros(n, dtype=torch.long), noise or 0.0
    elif name == "rings":
        label = torch.randint(0, 4, (n,), generator=generator)
        angle = 2 * math.pi * rand(n)
        radius = (label + 1).float()
        x = radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
        std = 0.08 if noise is None else noise
    elif name == "two_gaussians":
        label = (rand(n) >= TWO_GAUSSIANS_WEIGHTS[0]).long()
        x, std = torch.tensor(TWO_GAUSSIANS_MEANS)[label], TWO_GAUSSIANS_STD if noise is None else noise
    else:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {', '.join(ToyName.__args__)}")
    return (x + std * randn(n, 2)).float(), label


class Toy2DDataModule(InMemoryDataModule):
    """Points from a toy 2-D distribution; train, validation and test sets drawn with fixed seeds."""

    data_dim = 2

    def __init__(
        self,
        name: ToyName = "moons",
        n_train: int = 20_000,
        n_val: int = 2_000,
        n_test: int = 2_000,
        noise: float | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_seed: int = 0,
    ) -> None:
        """
        Args:
            name: moons, swiss_roll, 8gaussians, checkerboard, rings or two_gaussians (the 0.8 / 0.2 mixture).
            n_train: training points (one epoch).
            n_val: validation points.
            n_test: test points.
            noise: standard deviation of the Gaussian noise added to each point; default per distribution.
            batch_size: points per batch.
            num_workers: DataLoader worker processes.
            seed: seed of the generated sets (the test set uses seed + 2).
            shuffle_seed: the seed of the training order (fit.py's --seed sets it); the order of epoch e is
                drawn from shuffle_seed + e.
        """
        super().__init__()
        check_loader_options("point", num_workers, batch_size=batch_size, n_train=n_train, n_val=n_val, n_test=n_test)
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.shuffle_seed = batch_size, num_workers, shuffle_seed
        self.train_set = self.val_set = self.test_set = None

    @property
    def mode_means(self) -> torch.Tensor | None:
        """The centres (2, 2) of the two-Gaussian mixture, the weight-0.8 one first (for counting the samples a
        model draws in each mode); None for the other distributions."""
        return torch.tensor(TWO_GAUSSIANS_MEANS) if self.hparams.name == "two_gaussians" else None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        draw = lambda n, offset: TensorBatches(  # noqa: E731
            *sample_toy2d(h.name, n, torch.Generator().manual_seed(h.seed + offset), h.noise)
        )
        self.train_set, self.val_set, self.test_set = draw(h.n_train, 0), draw(h.n_val, 1), draw(h.n_test, 2)
