"""`--ckpt_path last`: the newest last.ckpt of a run with the same model, data and seed as this one, found through
the config.yaml LightningCLI saves next to each run's checkpoints. A run of another configuration is never
resumed, nor one whose configuration cannot be read."""

import importlib
from pathlib import Path

import yaml

# What makes two runs the same run. The Trainer's options (progress bar, devices, the epoch budget) may change
# between a run and its resumption.
SAME_RUN = ("model", "data", "seed_everything")


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """{"model.init_args.lr": 0.005, ...}: the leaves of a nested config, by dotted key."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    leaves = {}
    for key, value in tree.items():
        leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def resumable_changes(this_run: dict) -> frozenset[str]:
    """The model's own `RESUMABLE_CHANGES` (hyper-parameters a resumed run may change, such as a schedule's
    cool-down), as dotted config keys; none when the class cannot be imported."""
    model = this_run.get("model")
    class_path = model.get("class_path") if isinstance(model, dict) else None
    module, _, name = (class_path or "").rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return frozenset()
    return frozenset(f"model.init_args.{key}" for key in getattr(model_class, "RESUMABLE_CHANGES", ()))


def differences(saved: dict, this_run: dict) -> list[str]:
    """`key: saved value there, this run's here` for each option of SAME_RUN that differs, but those the model
    lets a resumed run change."""
    there = flatten({key: saved.get(key) for key in SAME_RUN})
    here = flatten({key: this_run.get(key) for key in SAME_RUN})
    may_change = resumable_changes(this_run)
    return [f"{key} {there.get(key)!r} there, {here.get(key)!r} here" for key in sorted(there.keys() | here.keys())
            if there.get(key) != here.get(key) and key not in may_change]  # fmt: skip


def saved_config(checkpoint: Path) -> dict | None:
    path = checkpoint.parents[1] / "config.yaml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def find_resumable(root: Path, this_run: dict) -> Path:
    """The newest `root/*/checkpoints/last*.ckpt` whose run had this run's SAME_RUN options."""
    found = sorted(root.glob("*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if not found:
        raise ValueError(f"--ckpt_path last: no last.ckpt under {root}; train once first, or pass a file")
    for checkpoint in found:
        saved = saved_config(checkpoint)
        if saved is not None and not differences(saved, this_run):
            return checkpoint
    newest = found[0].parents[1]
    saved = saved_config(found[0])
    why = "; ".join(differences(saved, this_run)[:3]) if saved is not None else "its config.yaml is unreadable"
    raise ValueError(
        f"--ckpt_path last: no run of this configuration under {root} (the newest, {newest}, differs: {why}); "
        "pass its checkpoint file to start from it anyway"
    )
