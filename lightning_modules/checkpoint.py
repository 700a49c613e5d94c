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
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling failure means a damaged or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read: {why_unreadable(path, error)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict); pass a .ckpt file from fit.py")
    return checkpoint


def why_unreadable(path: Path, error: Exception) -> str:
    """torch.save writes a zip archive: one whose start is a zip's but whose end is missing was cut short."""
    with path.open("rb") as file:
        is_zip = file.read(4) == b"PK\x03\x04"
    if is_zip:
        return f"it is truncated or damaged ({type(error).__name__}); copy it again or use an earlier checkpoint"
    return "it is not a checkpoint (not a file written by torch.save); pass the .ckpt file written by scripts/fit.py"


def class_path_of(model: L.LightningModule) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def plain(value: Any) -> Any:
    """A hyper-parameter as a config file holds it: tuples as lists, a class path's empty init_args dropped."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not (k == "init_args" and v in ({}, None))}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def differing_hyperparameters(
    checkpoint: dict[str, Any], model: L.LightningModule, ignore: frozenset[str] = frozenset()
) -> str:
    """`name saved -> current` for each hyper-parameter but `ignore` that the checkpoint's model and `model` set
    differently."""
    saved = {k: plain(v) for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_class_path"}
    current = {k: plain(v) for k, v in model.hparams.items() if k != "_class_path"}
    differing = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k) and k not in ignore)
    return ", ".join(f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)


def check_compatible(
    path: str | Path,
    model: L.LightningModule,
    datamodule: L.LightningDataModule | None = None,
    same_hyperparameters: bool = True,
) -> None:
    """Raise a CheckpointError naming `path` unless its weights and state fit `model` (and `datamodule`): the
    same model class, the same vocabulary and, with `same_hyperparameters` (to resume training), the same
    hyper-parameters. To validate, test or predict, other hyper-parameters are fine as long as the weights load
    (`weights_misfit` then explains a failure)."""
    checkpoint = read_checkpoint(path)
    saved_class = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if saved_class is not None and saved_class != class_path_of(model):
        raise CheckpointError(
            f"checkpoint {path} holds a {saved_class}, not the {class_path_of(model)} of this command; "
            "pass a checkpoint of this model, or the --model it was trained as"
        )
    vocab = getattr(datamodule, "vocab", None)
    saved_vocab = checkpoint.get(type(datamodule).__qualname__, {}).get("vocab") if datamodule is not None else None
    if isinstance(vocab, str) and isinstance(saved_vocab, str) and vocab != saved_vocab:
        raise CheckpointError(
            f"checkpoint {path} was trained on a text with another vocabulary ({len(saved_vocab)} characters, "
            f"this one has {len(vocab)}); use the same --data.path"
        )
    # A model may name hyper-parameters that a resumed run can change (its schedule's length, say), in
    # `RESUMABLE_CHANGES` (protocols.ResumesWithChanges); the others would train another network or objective.
    allowed = frozenset(getattr(model, "RESUMABLE_CHANGES", ()))
    changes = differing_hyperparameters(checkpoint, model, allowed) if same_hyperparameters else ""
    if changes:
        raise CheckpointError(
            f"checkpoint {path} was trained with other hyper-parameters ({changes}); "
            "resume with the flags of that run (or --config with its config.yaml), or start a new one without "
            "--ckpt_path"
        )


def weights_misfit(path: str | Path, model: L.LightningModule) -> CheckpointError:
    """The error for a checkpoint whose weights do not load into `model` (its state_dict has other names or
    shapes), naming the hyper-parameters that differ."""
    changes = differing_hyperparameters(read_checkpoint(path), model) or "none: the network differs"
    return CheckpointError(
        f"checkpoint {path} does not fit this {type(model).__name__} (hyper-parameters that differ: {changes}); "
        "use the flags it was trained with (or --config with its config.yaml)"
    )


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


def load_raw_weights(model: L.LightningModule, path: str | Path) -> L.LightningModule:
    """`model` with the un-averaged weights of a checkpoint written during a run with Lightning's
    EMAWeightAveraging, which saves the average as the state_dict and the weights being trained under
    `current_model_state`: scoring both says what the average is worth."""
    checkpoint = read_checkpoint(path)
    if "current_model_state" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} holds no raw weights beside its state_dict (it was not written during a run with "
            "EMAWeightAveraging); drop --raw-weights"
        )
    model.load_state_dict(checkpoint["current_model_state"])
    return model


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
