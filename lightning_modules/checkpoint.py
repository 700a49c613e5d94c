"""Load any model of the zoo back from a checkpoint written by scripts/fit.py."""

import importlib
from pathlib import Path
from typing import Any

import lightning as L
import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged or not from this project; the message says which."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's dictionary, loaded with weights_only=True (no code runs while unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; pass the .ckpt file written by scripts/fit.py")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(error).__name__}); is it truncated?") from None


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> L.LightningModule:
    """The LightningModule saved in `path`, in eval mode. LightningCLI records the model's class in the
    hyper-parameters (`_class_path`), so no model name is needed."""
    checkpoint = read_checkpoint(path)
    class_path = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if not class_path:
        raise CheckpointError(f"checkpoint {path} does not name its model class; was it written by scripts/fit.py?")
    module_name, class_name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls.load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()
