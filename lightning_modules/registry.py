"""The registry of models, derived from `configs/`: a model name is registered by adding `configs/NAME.yaml`,
which names the LightningModule (`model.class_path`), its DataModule and the trainer defaults. Nothing else
lists the models: scripts and tests read them from here."""

import importlib
from pathlib import Path

import lightning as L
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def config_path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def read_config(name: str) -> dict:
    """The parsed configs/NAME.yaml."""
    return yaml.safe_load(config_path(name).read_text(encoding="utf-8"))


def import_class(class_path: str) -> type:
    """The class a dotted path names, e.g. "lightning_modules.autoencoders.vae.VAE"."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def model_class(name: str) -> type[L.LightningModule]:
    """The LightningModule class of a registered model name."""
    return import_class(read_config(name)["model"]["class_path"])


def model_classes() -> set[type[L.LightningModule]]:
    """The distinct LightningModule classes of all registered models: the only classes a checkpoint may load
    into."""
    return {model_class(name) for name in model_names()}
