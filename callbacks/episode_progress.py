"""The progress bar of a reinforcement-learning run: the recent return and environment steps per second."""

import time
from collections import deque

import lightning as L
import numpy as np

from lightning_modules.protocols import CountsThroughput, PlaysEpisodes, require


class EpisodeProgress(L.Callback):
    """After every training batch (a rollout), shows in the progress bar `return`, the mean return of the
    last `window` finished episodes, and `<unit>/s` (env_steps/s), the model's count of the batch over the
    wall time since the previous batch ended. Shown only, not logged: the model logs its own curves."""

    def __init__(self, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"EpisodeProgress: window must be at least 1 episode, got {window}")
        self.returns: deque[float] = deque(maxlen=window)
        self.last: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, PlaysEpisodes, "EpisodeProgress")
        require(pl_module, CountsThroughput, "EpisodeProgress")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        now = time.perf_counter()
        if isinstance(outputs, dict) and outputs.get("episode_returns") is not None:
            self.returns.extend(np.asarray(outputs["episode_returns"], dtype=float).tolist())
        if self.returns:
            pl_module.log("return", sum(self.returns) / len(self.returns), prog_bar=True, logger=False, batch_size=1)
        if self.last is not None and now > self.last:
            rate = pl_module.count_throughput(batch) / (now - self.last)
            pl_module.log(f"{pl_module.throughput_unit}/s", rate, prog_bar=True, logger=False, batch_size=1)
        self.last = now
