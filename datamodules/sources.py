"""Where data comes from: the root folder, the one-line data errors, and the embedded fallback."""

import contextlib
import gzip
import io
import math
import os
import shutil
import tarfile
import zlib
from pathlib import Path

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from torchvision.transforms.v2 import functional as TF

ENV_ROOT = "LIGHTNING_ZOO_DATA"


class DataError(ValueError):
    """Bad or missing data. The message is one line that names the problem and the fix."""


def check_loader_options(unit: str, num_workers: int, **counts: int) -> None:
    """Refuse counts below 1 (`batch_size=0`: "--data.batch_size must be at least 1 {unit}") and a negative
    number of loader workers, naming the flag."""
    for flag, value in counts.items():
        if value < 1:
            raise DataError(f"--data.{flag} must be at least 1 {unit}, got {value}")
    if num_workers < 0:
        raise DataError(f"--data.num_workers must be 0 (load in the main process) or more, got {num_workers}")


def resolve_root(root: str | os.PathLike | None) -> Path:
    """`--data.root`, else $LIGHTNING_ZOO_DATA, else ./data."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get(ENV_ROOT) or "data").expanduser()


def quiet_download(download) -> bool:
    """Run a torchvision download; True on success. Its chatter (one line per failed mirror) is hidden,
    because an offline failure is reported once, by the caller, as the fallback warning."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            download()
    except Exception:  # noqa: BLE001 - any failure (network, disk, checksum) means "not available"
        return False
    return True


def warn_fallback(dataset: str, folder: Path, expected: str) -> None:
    """One loud line: a run that silently trained on other data would mislead."""
    rank_zero_warn(
        f"FALLBACK: {dataset} not found in {folder} ({expected}) and it could not be downloaded; "
        "training on the embedded scikit-learn digits instead. "
        "Set --data.root or LIGHTNING_ZOO_DATA, or pass --data.fallback false to make this an error.",
    )


def extract(archive: Path, destination: Path) -> None:
    """Unpack a downloaded .gz (into the file of its name without .gz) or .tar.gz into `destination`. A .gz is
    written to a temporary name first, so a damaged archive leaves no half file that would pass for the real one."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(destination, filter="data")
        else:
            target = destination / archive.name.removesuffix(".gz")
            partial = target.with_name(target.name + ".partial")
            try:
                with gzip.open(archive, "rb") as source, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                partial.replace(target)
            finally:
                partial.unlink(missing_ok=True)
    except (gzip.BadGzipFile, EOFError, zlib.error, tarfile.TarError) as error:
        raise DataError(
            f"archive {archive} is truncated or corrupt ({type(error).__name__}: {error}); delete it and download again"
        ) from None
    except OSError as error:
        raise DataError(
            f"cannot unpack {archive} into {destination} ({error.strerror}); make the folder writable, or unpack the "
            "archive elsewhere and pass --data.root DIR"
        ) from None


def check_idx(path: Path, ndim: int) -> None:
    """Check an idx file of bytes (the MNIST format): its magic (0, 0, 0x08 = ubyte, ndim), then ndim big-endian
    uint32 sizes, then exactly their product of bytes. torchvision's reader fails on these with its own words."""
    size, header = path.stat().st_size, 4 + 4 * ndim
    fix = "delete it and download again"
    with open(path, "rb") as file:
        head = file.read(header)
    if len(head) < header:
        raise DataError(f"{path} is truncated or corrupt: its header is cut short ({size} of {header} bytes); {fix}")
    if head[:4] != bytes([0, 0, 0x08, ndim]):
        raise DataError(
            f"{path} is not an idx file of {ndim}-d bytes (magic {head[:4].hex()}, not 00000800{ndim:02x}); {fix}"
        )
    shape = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if size - header != math.prod(shape):
        raise DataError(
            f"{path} is truncated or corrupt: its header announces {shape} = {math.prod(shape)} bytes of data, "
            f"it holds {size - header}; {fix}"
        )


def load_digits_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 UCI 8x8 handwritten digits that ship inside scikit-learn, as uint8 (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 of a 4x4 block; scale to the 0..255 range of the real image sets.
    images = torch.from_numpy(digits.images).float().mul_(255.0 / 16.0).round_().to(torch.uint8)
    return images.unsqueeze(1), torch.from_numpy(digits.target).long()


def fit_shape(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to (N, channels, size, size), repeating or averaging channels."""
    if images.shape[-2:] != (size, size):
        images = TF.resize(images, [size, size], antialias=True)
    if images.shape[1] == channels:
        return images.contiguous()
    if images.shape[1] == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if channels == 1:
        # ITU-R 601 luma, the usual grey conversion.
        return TF.rgb_to_grayscale(images).contiguous()
    raise DataError(f"cannot turn {images.shape[1]}-channel images into {channels} channels; use channels=1 or 3")
