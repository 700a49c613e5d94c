"""Gymnasium environments as the "data" of reinforcement learning.

An agent makes its own data, so there is no dataset to load: the model collects its rollouts itself
(it owns the environment id, because its network's shape depends on it and a checkpoint must be able
to rebuild the environment alone). This DataModule gives Lightning the loop structure instead:
one training batch per epoch, on which the model collects one rollout and learns from it, and a test
set of evaluation episodes, named by their seeds, that the model plays greedily.
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.rl.environments import EVAL_SEED


class _Ticks(Dataset):
    """`length` items, each its own index: the training "batch" only tells the model to collect a rollout."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


class GymDataModule(L.LightningDataModule):
    """One rollout per training epoch; the test set is `eval_episodes` greedy episodes with fixed seeds."""

    data_source = "gymnasium"

    def __init__(self, eval_episodes: int = 20, eval_seed: int = EVAL_SEED) -> None:
        """
        Args:
            eval_episodes: episodes played greedily by `trainer.test` (all at once, one environment each).
            eval_seed: seed of the first evaluation episode; episode i uses eval_seed + i. Fixed, and far from
                the training seeds, so that every run is tested on the same unseen episodes.
        """
        super().__init__()
        if eval_episodes < 1:
            raise ValueError(f"--data.eval_episodes must be at least 1, got {eval_episodes}")
        self.save_hyperparameters()

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Ticks(1), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        seeds = torch.arange(self.hparams.eval_episodes) + self.hparams.eval_seed
        return DataLoader([seeds], batch_size=None)
