"""Every registered model has a config whose classes exist; fit.py knows no model by name."""

import importlib
from pathlib import Path

import pytest
import yaml

from datamodules import DATAMODULES
from lightning_modules import MODELS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def load_class(path: str):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_has_a_config_naming_its_class(name):
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert load_class(config["model"]["class_path"]) is MODELS[name]
    assert load_class(config["data"]["class_path"]) in DATAMODULES.values()


def test_every_config_is_registered():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(MODELS)


def test_fit_knows_no_model_by_name():
    source = (Path(__file__).resolve().parents[1] / "scripts" / "fit.py").read_text()
    for name, cls in MODELS.items():
        assert cls.__name__ not in source and f'"{name}"' not in source
