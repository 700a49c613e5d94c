"""Bad input, one category at a time: each gets one line that names the flag or file, what was wrong and the fix,
and a non-zero exit, never a traceback nor a run on garbage. Dataset files are written here in their real formats
and then damaged the way downloads and disks damage them."""

import gzip
import os
import re
import tarfile

import argument_types
import numpy as np
import pytest
import torch
from test_fit import FAST

import datamodules.sources as sources
from conftest import N_TRAIN, one_error_line, write_celeba, write_cifar10, write_idx, write_mnist
from datamodules import CelebADataModule, CIFAR10DataModule, DataError, MNISTDataModule, Toy2DDataModule

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
AS_ROOT = os.geteuid() == 0  # root writes to read-only folders, so those cases are simulated for it


def mnist(root, **options) -> MNISTDataModule:
    datamodule = MNISTDataModule(root=str(root), download=False, fallback=False, **options)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def gzip_all(raw) -> None:
    """Replace each MNIST file by its .gz, as torchvision downloads them."""
    for path in list(raw.iterdir()):
        with gzip.open(f"{path}.gz", "wb") as archive:
            archive.write(path.read_bytes())
        path.unlink()


# --- dataset files: a valid header over wrong contents, a header cut short, damaged or unwritable archives ---------
def test_images_of_another_size_are_refused(tmp_path):
    raw = write_mnist(tmp_path)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((N_TRAIN, 28, 27)))  # a valid idx file, 27 columns
    with pytest.raises(
        DataError, match=r"MNIST training images .* are \(1, 28, 27\) .* not the dataset's \(1, 28, 28\)"
    ):
        mnist(tmp_path)


def test_mnist_labels_outside_the_classes_are_refused(tmp_path):
    raw = write_mnist(tmp_path)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(40, 10))
    with pytest.raises(DataError, match=r"MNIST test labels .* run from 10 to 10, outside the 10 classes 0\.\.9"):
        mnist(tmp_path)


def test_cifar_labels_outside_the_classes_are_refused(tmp_path):
    import pickle

    folder = write_cifar10(tmp_path)
    batch = pickle.loads((folder / "data_batch_2").read_bytes())
    batch["labels"][3] = -1
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match=r"CIFAR10 training labels .* from -1 to"):
        CIFAR10DataModule(root=str(tmp_path), download=False, fallback=False).setup("fit")


@pytest.mark.parametrize("kept", [0, 6, 15])  # the 16-byte header of an image file: none, magic and a size, all but one
def test_a_header_cut_short_is_named_as_such(tmp_path, kept, fit_in_process):
    raw = write_mnist(tmp_path / "data")
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:kept])
    with pytest.raises(DataError, match=rf"train-images-idx3-ubyte is truncated .* header is cut short \({kept} of 16"):
        mnist(tmp_path / "data")
    # Through the script: the project's line, not the reader's own low-level message.
    line = one_error_line(fit_in_process("--model", "lenet5", *FAST, "--data.root", str(tmp_path / "data")))
    assert f"header is cut short ({kept} of 16 bytes); delete it and download again" in line


def test_a_wrong_magic_number_is_refused(tmp_path):
    raw = write_mnist(tmp_path)
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03" + path.read_bytes()[4:])  # an idx3 header on a label file
    with pytest.raises(DataError, match="train-labels-idx1-ubyte is not an idx file of 1-d bytes"):
        mnist(tmp_path)


def test_truncated_gz_archive_is_named_not_reported_missing(tmp_path):
    raw = write_mnist(tmp_path)
    gzip_all(raw)
    archive = raw / "t10k-images-idx3-ubyte.gz"
    archive.write_bytes(archive.read_bytes()[:-20])
    # download=True: today's path would try the mirrors, fail offline and fall back to the embedded digits.
    with pytest.raises(DataError, match=r"archive .*t10k-images-idx3-ubyte.gz is truncated or corrupt"):
        mnist(tmp_path)
    assert not (raw / "t10k-images-idx3-ubyte").exists()  # no half file left to pass for the real one


def test_intact_gz_archives_are_unpacked(tmp_path):
    raw = write_mnist(tmp_path)
    before = (raw / "train-images-idx3-ubyte").read_bytes()
    gzip_all(raw)
    assert mnist(tmp_path).data_source == "MNIST"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == before


def test_corrupt_tar_gz_archive_is_named(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(50))  # a gzip magic over zeros
    with pytest.raises(DataError, match=r"archive .*cifar-10-python.tar.gz is truncated or corrupt"):
        CIFAR10DataModule(root=str(tmp_path), download=False).setup("fit")


def test_intact_tar_gz_archive_is_unpacked(tmp_path):
    folder = write_cifar10(tmp_path / "made")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    datamodule = CIFAR10DataModule(root=str(tmp_path), download=False, fallback=False)
    datamodule.setup("fit")
    assert datamodule.data_source == "CIFAR10"


def test_archives_in_a_folder_that_cannot_be_written(tmp_path, monkeypatch):
    raw = write_mnist(tmp_path)
    gzip_all(raw)
    if AS_ROOT:  # what open() raises for anyone else in a folder without write permission

        def refuse(path, mode="r", *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(sources, "open", refuse, raising=False)
    else:
        raw.chmod(0o555)
    try:
        with pytest.raises(DataError, match=r"cannot unpack .*\.gz into .*raw \(Permission denied\); make the folder"):
            mnist(tmp_path)
    finally:
        raw.chmod(0o755)


# --- nonsensical counts and sizes: the flag is named ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--model", "vae", "--model.latent_dim", "0"), "--model.latent_dim"),
        (("--model", "ae", "--model.latent_dim", "-3"), "--model.latent_dim"),
        (("--model", "gpt", "--model.n_head", "0"), "--model.n_head"),
        (("--model", "lenet5", "--data.batch_size", "0"), "--data.batch_size"),
        (("--model", "gpt", "--data.batch_size", "0"), "--data.batch_size"),
    ],
)
def test_fit_refuses_counts_below_one(fit_in_process, empty_root, args, flag):
    line = one_error_line(fit_in_process(*args, *FAST, "--data.root", str(empty_root)))
    assert line.startswith(f"fit.py: error: {flag}"), line


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--top_k", "0"), ("--steps", "0"), ("--max_new_tokens", "-5"), ("--n", "0"), ("--num_samples", "0")],
)
def test_sample_refuses_counts_below_one(script_in_process, lenet_checkpoint, flag, value):
    line = one_error_line(script_in_process("sample", "--ckpt", str(lenet_checkpoint), flag, value))
    assert f"argument {flag}: must be a whole number of at least 1, got {value}" in line


@pytest.mark.parametrize(("flag", "value"), [("--episodes", "0"), ("--samples", "-1"), ("--fps", "0")])
def test_evaluate_refuses_counts_below_one(script_in_process, lenet_checkpoint, flag, value):
    line = one_error_line(script_in_process("evaluate", "--ckpt", str(lenet_checkpoint), flag, value))
    assert f"argument {flag}: must be" in line and value in line


# --- outputs that cannot be written --------------------------------------------------------------------------------
def test_out_in_a_missing_folder(script_in_process, lenet_checkpoint, tmp_path):
    out = tmp_path / "no" / "such" / "grid.png"
    line = one_error_line(script_in_process("sample", "--ckpt", str(lenet_checkpoint), "--out", str(out)))
    assert f"argument --out: the folder {out.parent} of {out} does not exist; create it" in line


def test_video_in_a_missing_folder(script_in_process, lenet_checkpoint, tmp_path):
    out = tmp_path / "missing" / "run.gif"
    line = one_error_line(script_in_process("evaluate", "--ckpt", str(lenet_checkpoint), "--video", str(out)))
    assert f"argument --video: the folder {out.parent} of {out} does not exist" in line


def test_read_only_working_directory(script_in_process, lenet_checkpoint, tmp_path, monkeypatch):
    if AS_ROOT:  # root may write anywhere: stand in for os.access's answer in a read-only folder
        monkeypatch.setattr(argument_types, "writable", lambda folder: folder.resolve() != tmp_path.resolve())
    else:
        tmp_path.chmod(0o555)
    try:
        explicit = one_error_line(script_in_process("sample", "--ckpt", str(lenet_checkpoint), "--out", "grid.png"))
        default = one_error_line(script_in_process("sample", "--ckpt", str(lenet_checkpoint)))
    finally:
        tmp_path.chmod(0o755)
    assert f"argument --out: the folder {tmp_path.resolve()} of grid.png is not writable" in explicit
    assert "--out: the folder" in default and "(the default --out)" in default


# --- a GPU asked for on a machine without one ----------------------------------------------------------------------
@NO_GPU
@pytest.mark.parametrize("script", ["sample", "evaluate"])
def test_device_cuda_without_a_gpu(script_in_process, lenet_checkpoint, script):
    line = one_error_line(script_in_process(script, "--ckpt", str(lenet_checkpoint), "--device", "cuda"))
    assert "argument --device: cuda: this machine has no CUDA GPU that torch can use; use cpu" in line


def test_device_that_is_no_device(script_in_process, lenet_checkpoint):
    line = one_error_line(script_in_process("sample", "--ckpt", str(lenet_checkpoint), "--device", "gpu0"))
    assert "argument --device: 'gpu0' is not a device; use cpu, cuda or cuda:N" in line


@NO_GPU
def test_fit_accelerator_gpu_without_a_gpu(fit_in_process, empty_root):
    line = one_error_line(
        fit_in_process("--model", "lenet5", *FAST, "--trainer.accelerator", "gpu", "--data.root", str(empty_root))
    )
    assert "--trainer.accelerator" in line


# --- a model paired with data it cannot take -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ("ppo", "mnist", "ppo plays its Gymnasium environment and takes no dataset: use --data gym"),
        ("ppo", "toy2d", "ppo plays its Gymnasium environment and takes no dataset: use --data gym"),
        ("gpt", "mnist", "gpt needs text data: use --data text"),
        ("vae", "text", "needs image data"),
    ],
)
def test_model_with_data_it_cannot_take(fit_in_process, empty_root, monkeypatch, model, data, message):
    monkeypatch.setenv("LIGHTNING_ZOO_DATA", str(empty_root))  # offline: the image sets fall back to the digits
    line = one_error_line(fit_in_process("--model", model, "--data", data, *FAST))
    assert message in line, line


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: Toy2DDataModule(batch_size=0), "--data.batch_size must be at least 1 point, got 0"),
        (lambda: Toy2DDataModule(n_val=-2), "--data.n_val must be at least 1 point, got -2"),
        (lambda: Toy2DDataModule(num_workers=-1), "--data.num_workers must be 0"),
        (lambda: MNISTDataModule(num_workers=-1), "--data.num_workers must be 0"),
    ],
)
def test_counts_of_the_data_below_their_minimum_name_the_flag(make, flag):
    with pytest.raises(DataError, match=re.escape(flag)):
        make()


def test_celeba_attributes_other_than_minus_one_and_one_are_refused(tmp_path):
    folder = write_celeba(tmp_path)
    path = folder / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    name, *values = lines[2].split()
    lines[2] = " ".join([name, "0", *values[1:]])  # torchvision would read 0 as the label 0 without a word
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"CelebA attributes in .*list_attr_celeba.txt must be -1 or 1, found 0"):
        ready = CelebADataModule(root=str(tmp_path), download=False, fallback=False)
        ready.prepare_data()
        ready.setup("fit")
