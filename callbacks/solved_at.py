"""When a reinforcement-learning run first solved its environment, in environment steps and wall-clock seconds."""

import os
import time
from collections import deque
from pathlib import Path

import lightning as L
import numpy as np

from lightning_modules.protocols import PlaysEpisodes

_IMPORTED = time.perf_counter()


def seconds_since_process_start() -> float:
    """Wall time since this Python process started, imports included (Linux's /proc; elsewhere, since this module
    was imported)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


class SolvedAt(L.Callback):
    """The first time the mean return of the last `window` finished training episodes reached `threshold`:
    `env_steps` (the run's environment step at which the episode that tipped the mean ended) and `seconds`
    since the process started (imports included, as the reference implementation, CleanRL, is timed). Both
    stay None until then, and for a model that is not a PlaysEpisodes. Logs `train/solved_at_env_steps`
    once, against environment steps, to the run's loggers.

    Args:
        threshold: the mean return that counts as solved; default the model's `reward_threshold` (gymnasium's
            for the environment: 475 for CartPole-v1). With neither, nothing is recorded.
        window: finished training episodes averaged.
    """

    def __init__(self, threshold: float | None = None, window: int = 20) -> None:
        if window < 1:
            raise ValueError(f"SolvedAt: window must be at least 1 episode, got {window}")
        self.threshold, self.window = threshold, window
        self.returns: deque[float] = deque(maxlen=window)
        self.env_steps: int | None = None
        self.seconds: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.threshold is None and isinstance(pl_module, PlaysEpisodes):
            self.threshold = pl_module.reward_threshold

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        if self.threshold is None or self.env_steps is not None or not isinstance(outputs, dict):
            return
        returns, ends = outputs.get("episode_returns"), outputs.get("episode_env_steps")
        if returns is None or ends is None:
            return
        for value, end in zip(np.asarray(returns, dtype=float), np.asarray(ends), strict=True):
            self.returns.append(float(value))
            if len(self.returns) == self.window and sum(self.returns) / self.window >= self.threshold:
                self.env_steps, self.seconds = int(end), seconds_since_process_start()
                for logger in trainer.loggers:
                    logger.log_metrics({"train/solved_at_env_steps": float(self.env_steps)}, step=self.env_steps)
                return
