"""Every config names classes that exist; the registry is the configs folder; scripts know no model by name."""

from pathlib import Path

import lightning as L
import pytest

from datamodules import DATAMODULES
from lightning_modules.registry import CONFIGS, import_class, model_class, model_names, read_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", model_names())
def test_each_config_names_a_lightning_module_and_a_datamodule(name):
    config = read_config(name)
    assert issubclass(model_class(name), L.LightningModule)
    assert import_class(config["data"]["class_path"]) in DATAMODULES.values()


def test_the_registry_is_the_configs_folder(tmp_path, monkeypatch):
    assert model_names() == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    (tmp_path / "mine.yaml").write_text((CONFIGS / "vae.yaml").read_text())
    monkeypatch.setattr("lightning_modules.registry.CONFIGS", tmp_path)
    assert model_names() == ["mine"]


def test_scripts_know_no_model_by_name():
    """Scripts import no family package and quote no model name: what they do to a model goes through the
    registry and the contracts."""
    families = [p.name for p in (REPO / "lightning_modules").iterdir() if (p / "__init__.py").is_file()]
    for script in (REPO / "scripts").glob("*.py"):
        source = script.read_text()
        for family in families:
            if family != "blocks":
                assert f"lightning_modules.{family}" not in source, (script.name, family)
        for name in model_names():
            assert f'"{name}"' not in source, (script.name, name)
