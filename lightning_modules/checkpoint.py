"""Load any model of the zoo back from a checkpoint written by scripts/fit.py."""

import inspect
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules import DATAMODULES
from lightning_modules.registry import model_classes


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
    allowed = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in model_classes()}
    if class_path not in allowed:
        raise CheckpointError(
            f"checkpoint {path} holds a {class_path}, not a model of this project; pass a checkpoint of a registered model"
        )
    model = allowed[class_path].load_from_checkpoint(path, map_location=map_location, weights_only=True)
    return model.eval()


def load_datamodule(path: str | Path, root: str | None = None) -> L.LightningDataModule | None:
    """The DataModule the checkpoint's model was trained with, rebuilt from the arguments Lightning saved
    beside the model's (`datamodule_hyper_parameters`), with its data root replaced by `root` when given
    (the data may have moved). None when the checkpoint records no DataModule."""
    checkpoint = read_checkpoint(path)
    spec = checkpoint.get("datamodule_hyper_parameters")
    if not spec or "_class_path" not in spec:
        return None
    class_path = spec["_class_path"]
    allowed = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in DATAMODULES.values()}
    if class_path not in allowed:
        raise CheckpointError(f"checkpoint {path} names an unknown DataModule {class_path}; was it written by fit.py?")
    cls = allowed[class_path]
    # The saved hyper-parameters also hold what the module logged (e.g. data_source): keep only its arguments.
    accepted = inspect.signature(cls.__init__).parameters
    args = {k: v for k, v in spec.items() if k in accepted}
    if root is not None:
        if "root" not in accepted:
            raise CheckpointError(f"--data.root: the data of {cls.__name__} has no root; drop the flag")
        args["root"] = root
    return cls(**args)
