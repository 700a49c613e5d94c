"""Character-level text: any UTF-8 file, a vocabulary of its characters, windows of `block_size`."""

import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from torch.utils.data import Dataset

from datamodules.batches import InMemoryDataModule
from datamodules.sources import DataError, check_loader_options, resolve_root

DEFAULT_FILE = Path("text") / "1984.txt"
FALLBACK_BYTES = 1_000_000


class CharWindows(Dataset):
    """Windows of `block_size + 1` characters starting every `stride` positions; a sample is the window
    without its last character and the same window shifted by one (the next-character targets)."""

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int) -> None:
        self.ids, self.block_size = ids, block_size
        self.starts = torch.arange(0, len(ids) - block_size, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = torch.arange(self.block_size + 1)
        windows = self.ids[self.starts[torch.as_tensor(indices)][:, None] + offsets]
        return windows[:, :-1], windows[:, 1:]


def stdlib_corpus(limit: int = FALLBACK_BYTES) -> str:
    """The embedded fallback corpus: the Python standard library's own source, in a fixed order."""
    parts, size = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="ignore")
        parts.append(text)
        size += len(text)
        if size >= limit:
            break
    return "".join(parts)[:limit]


class TextDataModule(InMemoryDataModule):
    """Char-level language-modelling data. The last `val_fraction` of the file is the validation (and
    test) text, as in nanoGPT, so losses compare with its figures. The vocabulary is saved in the
    checkpoint (`state_dict`), so sampling needs no data file."""

    def __init__(
        self,
        path: str | None = None,
        root: str | None = None,
        block_size: int = 256,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        fallback: bool = True,
        shuffle_seed: int = 0,
    ) -> None:
        """
        Args:
            path: a UTF-8 text file, absolute or relative to the working directory or to `root`;
                default `<root>/text/1984.txt`.
            root: data folder; default $LIGHTNING_ZOO_DATA, else ./data.
            block_size: characters of context per training sample.
            batch_size: windows per batch (per device).
            num_workers: DataLoader worker processes.
            val_fraction: the share at the end of the file used for validation and test.
            fallback: when the default file is missing, train on the Python standard library's source
                (with a warning); false makes that an error. A `path` given explicitly never falls back.
            shuffle_seed: the seed of the training order (fit.py's --seed sets it); the order of epoch e is
                drawn from shuffle_seed + e.
        """
        super().__init__()
        check_loader_options("window", num_workers, batch_size=batch_size)
        if block_size < 1:
            raise DataError(f"--data.block_size must be at least 1, got {block_size}")
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"--data.val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.batch_size, self.num_workers, self.shuffle_seed = batch_size, num_workers, shuffle_seed
        self._text: str | None = None
        self._vocab: str | None = None
        self.data_source: str | None = None
        self.train_set = self.val_set = None

    # --- the text and its vocabulary ------------------------------------------------------------
    @property
    def text(self) -> str:
        if self._text is None:
            self._text, self.data_source = self._read()
        return self._text

    def _read(self) -> tuple[str, str]:
        explicit = self.hparams.path is not None
        root = resolve_root(self.hparams.root)
        path = Path(self.hparams.path) if explicit else root / DEFAULT_FILE
        if explicit and not path.is_absolute() and not path.exists() and (root / path).exists():
            path = root / path  # a relative path is looked up in the data root too, so configs can name a file
        if not path.is_file():
            if explicit or not self.hparams.fallback:
                raise DataError(f"text file {path} not found; pass --data.path FILE with a UTF-8 text file")
            rank_zero_warn(
                f"FALLBACK: {path} not found; training on the Python standard library's source instead. "
                "Pass --data.path FILE, or --data.fallback false to make this an error."
            )
            return stdlib_corpus(), "embedded_stdlib"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"text file {path} is not UTF-8 (bad byte at offset {error.start}); convert it, "
                f"e.g. iconv -f latin1 -t utf-8 {path.name}"
            ) from None
        if len(text) <= self.hparams.block_size + 1:
            raise DataError(
                f"text file {path} has {len(text)} characters, too few for block_size "
                f"{self.hparams.block_size}; use a longer text or a smaller --data.block_size"
            )
        return text, str(path)

    @property
    def vocab(self) -> str:
        """The sorted characters of the text; index i is token i."""
        if self._vocab is None:
            self._vocab = "".join(sorted(set(self.text)))
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def sequence_length(self) -> int:
        """The length of the training windows; linked into models by scripts/fit.py."""
        return self.hparams.block_size

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of `text`, found by binary search over the sorted code points (no per-char Python)."""
        codes = torch.from_numpy(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
        vocab_codes = torch.tensor([ord(char) for char in self.vocab], dtype=torch.long)
        ids = torch.searchsorted(vocab_codes, codes).clamp_(max=len(vocab_codes) - 1)
        unknown = vocab_codes[ids] != codes
        if unknown.any():
            chars = "".join(sorted({chr(c) for c in codes[unknown].tolist()}))
            raise DataError(f"characters not in the vocabulary: {chars!r}")
        return ids

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.vocab[i] for i in ids.tolist())

    # --- Lightning hooks ------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        ids = self.encode(self.text)
        n_train = int(len(ids) * (1.0 - self.hparams.val_fraction))
        block = self.hparams.block_size
        if min(n_train, len(ids) - n_train) <= block:
            raise DataError(
                f"the text has {len(ids)} characters: too few for a train and a validation window of "
                f"{block}; use a longer text or a smaller --data.block_size"
            )
        self.train_set = CharWindows(ids[:n_train], block, stride=1)
        self.val_set = CharWindows(ids[n_train:], block, stride=block)
        self.save_hyperparameters({**self.hparams, "data_source": self.data_source})

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "vocab": self.vocab}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict["vocab"] != self.vocab:
            raise DataError(
                "the checkpoint was trained on a text with another vocabulary; resume with the same --data.path"
            )
