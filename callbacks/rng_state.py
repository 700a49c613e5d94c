"""Save the random-number generators with the checkpoint, so a resumed run draws the same noise."""

import random
from typing import Any

import lightning as L
import numpy as np
import torch


class RestoreRNGState(L.Callback):
    """Lightning restores weights, optimiser and loop state but not the global generators, so the noise a
    model draws (dropout, a VAE's reparameterisation, a diffusion step) after a resume differs from the
    uninterrupted run. The states are kept in the checkpoint and put back when training starts, after
    the sanity check has drawn its own. Single-process runs only: a DDP checkpoint holds rank 0's state."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # Plain lists, so the checkpoint loads with torch.load(weights_only=True).
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
            "python": random.getstate(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None or trainer.world_size > 1:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
