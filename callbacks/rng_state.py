"""Save the random-number generators with the checkpoint, so a resumed run draws the same noise."""

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist


def generator_states() -> dict[str, Any]:
    """This process's global generators, as plain data (the checkpoint loads with weights_only=True)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": random.getstate(),
    }


def set_generator_states(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RestoreRNGState(L.Callback):
    """Lightning restores weights, optimiser and loop state but not the global generators, so the noise a
    model draws (dropout, a VAE's reparameterisation, a diffusion step) after a resume differs from the
    uninterrupted run. The states are kept in the checkpoint and put back when training starts, after the
    sanity check has drawn its own. Under DDP the checkpoint holds every process's states (gathered when it is
    written, which every process does together), and each process takes back its own."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        states = generator_states()
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return states
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, states)
        return {"ranks": gathered}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if state is None:
            return
        ranks = state.get("ranks", [state])
        if len(ranks) == trainer.world_size:  # a checkpoint of another number of processes: fresh noise
            set_generator_states(ranks[trainer.global_rank])
