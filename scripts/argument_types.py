"""argparse types of the scripts' flags: a value that cannot be right is refused by the parser, in one line that
names the flag (`sample.py: error: argument --top_k: ...`), before a checkpoint is loaded or a minute is spent."""

import argparse
import os
from pathlib import Path

import torch


def positive_int(text: str) -> int:
    value = int_value(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text}")
    return value


def int_value(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def device(text: str) -> str:
    """A torch device this machine has: `cuda` without a GPU is refused here, not deep inside a model's `.to`."""
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this machine has no CUDA GPU that torch can use; use cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif parsed.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r}: the scripts run on cpu or cuda")
    return text


def output_file(text: str) -> str:
    """A file that can be written: its folder exists and is writable (checked before the work, not after it)."""
    folder = Path(text).expanduser().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {folder} of {text} does not exist; create it (mkdir -p {folder})")
    if not writable(folder):
        raise argparse.ArgumentTypeError(f"the folder {folder.resolve()} of {text} is not writable; write elsewhere")
    return text


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)
