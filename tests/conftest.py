"""Fixtures: tiny datasets written in the real on-disk formats, and runners for the scripts: fit.py in a
subprocess, as a user runs it, and any script's main in this process, which saves the interpreter and torch import
per run."""

import contextlib
import functools
import importlib
import io
import logging
import os
import pickle
import random
import struct
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # the scripts import each other, as they do when run
# Sizes of the tiny sets; tests compare split sizes against these.
N_TRAIN, N_TEST = 120, 40
CELEBA_SPLITS = {0: 12, 2: 4}  # partition id -> images (0 train, 2 test)


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of the MNIST files: magic (0, 0, dtype code 0x08 = ubyte, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return raw


def write_cifar10(root: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per_batch = N_TRAIN // 5
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = N_TEST if name == "test_batch" else per_batch
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file)
    labels = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": labels, "num_cases_per_batch": per_batch}, file)
    return folder


def write_celeba(root: Path, seed: int = 0) -> Path:
    """img_align_celeba/*.jpg (178x218 like the real ones, smaller here) and the five list files."""
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(1, sum(CELEBA_SPLITS.values()) + 1)]
    partition = [p for p, n in CELEBA_SPLITS.items() for _ in range(n)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (27, 22, 3), dtype=np.uint8)).save(folder / "img_align_celeba" / name)
    attributes = [f"Attr_{i}" for i in range(40)]
    rows = lambda values: "\n".join(f"{n} {' '.join(map(str, v))}" for n, v in zip(names, values, strict=True)) + "\n"  # noqa: E731
    (folder / "list_eval_partition.txt").write_text(rows([[p] for p in partition]))
    (folder / "identity_CelebA.txt").write_text(rows([[i % 3 + 1] for i in range(len(names))]))
    (folder / "list_attr_celeba.txt").write_text(
        f"{len(names)}\n{' '.join(attributes)}\n" + rows(rng.choice([-1, 1], (len(names), 40)).tolist())
    )
    (folder / "list_bbox_celeba.txt").write_text(
        f"{len(names)}\nimage_id x_1 y_1 width height\n" + rows([[1, 2, 10, 12]] * len(names))
    )
    landmarks = (
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    )
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{len(names)}\n{landmarks}\n" + rows([[5] * 10] * len(names))
    )
    return folder


SAMPLE_TEXT = (
    "It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
    "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass doors "
    "of Victory Mansions, though not quickly enough to prevent a swirl of gritty dust from entering along "
    "with him.\n"
) * 8


def write_text(root: Path) -> Path:
    path = root / "text" / "1984.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SAMPLE_TEXT, encoding="utf-8")
    return path


def one_error_line(result) -> str:
    """The error of a failed run: one line on stderr with a non-zero exit, not a traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def write_all_datasets(root: Path) -> Path:
    """Every dataset, each in its real format, under `root`."""
    write_mnist(root, "MNIST", seed=0)
    write_mnist(root, "FashionMNIST", seed=1)
    write_cifar10(root)
    write_celeba(root)
    write_text(root)
    return root


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data root holding every dataset in its real format."""
    return write_all_datasets(tmp_path / "data")


@pytest.fixture
def empty_root(tmp_path: Path) -> Path:
    root = tmp_path / "nothing_here"
    root.mkdir()
    return root


def run_fit(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the real scripts/fit.py in a subprocess, as a user would."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTNING_ZOO_")}
    full_env = {**inherited, **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fit.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Imported here, not first inside a test: Lightning's log handler keeps the stderr of the moment it is imported,
# which inside a test is that test's capture, closed when the test ends.
import fit  # noqa: E402, F401 - for that side effect; the runners below import the scripts by name


@dataclass
class FitResult:
    returncode: int
    stdout: str
    stderr: str


def show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def script_in_process_at(script: str, cwd: Path, *args: str) -> FitResult:
    """Run `main(args)` of scripts/<script>.py (fit, sample, evaluate, benchmark) in this process from `cwd` as
    `python scripts/<script>.py *args` would, and return its exit code and output. What a run changes for the
    process is put back afterwards: the environment (PL_GLOBAL_SEED), the warning filters and format,
    deterministic algorithms, the float32 matmul precision, the global random generators, sys.argv (which the
    parsers' error() reads), the working directory and Lightning's log streams."""
    main = importlib.import_module(script).main
    out, err = io.StringIO(), io.StringIO()
    environment = dict(os.environ)
    deterministic = torch.are_deterministic_algorithms_enabled()
    precision = torch.get_float32_matmul_precision()
    generators = random.getstate(), np.random.get_state()
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(), torch.random.fork_rng():
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [str(REPO / "scripts" / f"{script}.py"), *args])
        patch.setattr(warnings, "formatwarning", warnings.formatwarning)
        warnings.showwarning = show_on_stderr  # as the interpreter would, instead of pytest's recorder
        for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchmetrics"):
            for handler in logging.getLogger(name).handlers:
                if isinstance(handler, logging.StreamHandler):
                    patch.setattr(handler, "stream", err)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(list(args))
        except SystemExit as exit_:  # the parser's error() and --help exit
            code = exit_.code if isinstance(exit_.code, int) else 1
        finally:
            os.environ.clear()
            os.environ.update(environment)
            torch.use_deterministic_algorithms(deterministic)
            torch.set_float32_matmul_precision(precision)
            random.setstate(generators[0])
            np.random.set_state(generators[1])
    return FitResult(code, out.getvalue(), err.getvalue())


def fit_in_process_at(cwd: Path, *args: str) -> FitResult:
    """`python scripts/fit.py *args` from `cwd`, in this process (script_in_process_at)."""
    return script_in_process_at("fit", cwd, *args)


@pytest.fixture
def fit_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`fit_in_process(*args)`: fit.py's main in this process, from tmp_path, with no LIGHTNING_ZOO_ variable
    but those the test sets."""
    for name in [n for n in os.environ if n.startswith("LIGHTNING_ZOO_")]:
        monkeypatch.delenv(name)
    return functools.partial(fit_in_process_at, tmp_path)


# --- Fixtures shared by a module's tests (tests/test_checkpoints.py) ------------------------------------------------
@pytest.fixture(scope="module")
def module_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`data_root`, written once for all the tests of a module (for checkpoints fitted once and shared)."""
    return write_all_datasets(tmp_path_factory.mktemp("data"))


# ---- The other scripts in this process (sample.py, evaluate.py, benchmark.py) ----


@pytest.fixture
def script_in_process(fit_in_process, tmp_path: Path):
    """`script_in_process("sample", *args)`: main() of scripts/sample.py (or evaluate, benchmark) in this process,
    from tmp_path, in the environment fit_in_process sets up (no LIGHTNING_ZOO_ variable but the test's)."""
    return lambda script, *args: script_in_process_at(script, tmp_path, *args)


@pytest.fixture
def lenet_checkpoint(tmp_path: Path) -> Path:
    """An untrained LeNet-5 classifier saved as fit.py saves one (LightningCLI's `_class_path` included): the FID
    classifier of the diffusion tests, and a checkpoint for the scripts' bad-input checks."""
    import lightning as L

    from lightning_modules.blocks.small_nets import LeNet5
    from lightning_modules.classifiers.classifier import ImageClassifier

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ImageClassifier(LeNet5, image_shape=(1, 28, 28), num_classes=10)
    model.hparams["_class_path"] = "lightning_modules.classifiers.classifier.ImageClassifier"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "lenet5.ckpt")
    return tmp_path / "lenet5.ckpt"


@pytest.fixture(autouse=True, scope="session")
def fp32_unless_chosen():
    """Runs in this process train in fp32 on every machine, as if its CPU had no native bf16: the tests' exact
    figures and tolerances are fp32's. Session-wide, so that module-wide fixtures' runs are fp32 too;
    tests/test_precision.py chooses the CPU's flags itself."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("zoo.precision.cpu_bf16_flags", lambda cpuinfo=None: [])
        yield


@pytest.fixture(scope="session")
def vqvae_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained VQ-VAE (the config's sizes, for 28x28 images) saved as fit.py saves one: what the latent
    diffusion model's runs load as their frozen autoencoder (`--model.vqvae_checkpoint`)."""
    import lightning as L

    from lightning_modules.vq.vqvae import VQVAE

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = VQVAE(image_shape=(1, 28, 28))
    model.hparams["_class_path"] = "lightning_modules.vq.vqvae.VQVAE"
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    path = tmp_path_factory.mktemp("vqvae") / "vqvae.ckpt"
    trainer.save_checkpoint(path)
    return path
