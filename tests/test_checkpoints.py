"""Every registered model's checkpoint through the scripts its contracts allow: a real last.ckpt from two steps of
scripts/fit.py (one fit per model, shared by the checks), then evaluate.py's test metrics, sample.py's grid, text
or inversion where the model fulfils Samples, GeneratesText or Encodes (a one-line refusal where it does not),
and a resume from the checkpoint that ends one batch later."""

import inspect
import json
import math
import os
from pathlib import Path

import evaluate
import lightning as L
import pytest
import sample
import torch
from PIL import Image
from test_ddpm import TINY_FLAGS as TINY_DDPM
from test_edm import TINY_FLAGS as TINY_EDM
from test_ldm import TINY_FLAGS as TINY_LDM
from test_sample import QUIET, TINY_GPT

from conftest import SAMPLE_TEXT, fit_in_process_at, one_error_line, script_in_process_at
from lightning_modules.autoencoders.autoencoder import Autoencoder
from lightning_modules.autoencoders.vae import VAE
from lightning_modules.checkpoint import load_datamodule, load_model, read_checkpoint
from lightning_modules.classifiers.classifier import ImageClassifier
from lightning_modules.diffusion.ddpm import DDPM
from lightning_modules.diffusion.edm import EDM
from lightning_modules.diffusion.ncsn import NCSN
from lightning_modules.experiments.comparative import ComparativeNetwork
from lightning_modules.experiments.staged import StagedNetwork
from lightning_modules.experiments.stochastic_mlp import StochasticMLPClassifier
from lightning_modules.experiments.topology import PixelGraph
from lightning_modules.flows.realnvp import RealNVP
from lightning_modules.gan.dcgan import DCGAN
from lightning_modules.graphs.graph_classifier import GraphClassifier
from lightning_modules.language.gpt import GPT
from lightning_modules.protocols import Encodes, GeneratesText, Samples, missing
from lightning_modules.registry import import_class, model_class, model_names, read_config
from lightning_modules.rl.ppo import PPO
from lightning_modules.self_supervised.simclr import SimCLR
from lightning_modules.vq.vqvae import VQVAE

FIT = ("--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
       "--trainer.num_sanity_val_steps", "0", *QUIET)  # fmt: skip
SMALL_BATCH = ("--data.batch_size", "16")
# The autoencoders' configured callbacks plot (a t-SNE of the test codes takes seconds); no script reads them.
NO_PLOTS = (*SMALL_BATCH, "--trainer.callbacks", "[]")
EMA_ONLY = "[{class_path: lightning.pytorch.callbacks.EMAWeightAveraging, init_args: {decay: 0.9}}]"
# What makes each model's run tiny; a model not named here runs its config with small batches.
TINY = {
    # The config's EMA, without its sample grid and inversion error (whose 64 inversions take seconds).
    "ddpm": (*SMALL_BATCH, *TINY_DDPM, "--model.inversion_steps", "1", "--model.sample_steps", "2",
             "--trainer.callbacks", EMA_ONLY),
    "edm": (*SMALL_BATCH, *TINY_EDM, "--trainer.callbacks", EMA_ONLY),
    "edm_cifar10": (*SMALL_BATCH, *TINY_EDM, "--model.denoiser.dropout", "0", "--trainer.callbacks", EMA_ONLY),
    "edm_celeba": (*SMALL_BATCH, *TINY_EDM, "--model.denoiser.dropout", "0", "--data.image_size", "16",
                   "--trainer.callbacks", EMA_ONLY),
    "gpt": TINY_GPT,
    # Two noise levels of two Langevin steps: sample.py's draws take 4 network evaluations, not 400 or 2000.
    "ncsn": (*SMALL_BATCH, "--model.num_levels", "2", "--model.steps_per_level", "2", "--trainer.callbacks", EMA_ONLY),
    "ncsn_toy": ("--model.num_levels", "2", "--model.steps_per_level", "2"),
    "gpt_shakespeare_cpu": (*TINY_GPT, "--data.path", "text/1984.txt"),  # the tiny root holds one text
    "hybrid_vit": (*SMALL_BATCH, "--model.backbone.depth", "1"),
    "pixel_attention": (*SMALL_BATCH, "--model.backbone.depth", "1"),
    "ppo": ("--model.num_steps", "16", "--model.update_epochs", "1", "--model.num_minibatches", "2",
            "--data.eval_episodes", "1"),
    "resnet": (*SMALL_BATCH, "--model.backbone.depth", "8"),
    "simclr": (*NO_PLOTS, "--model.backbone.depth", "8"),
    "vae": (*NO_PLOTS, "--model.iwae_samples", "4", "--model.iwae_test_images", "8"),
    "vit": (*SMALL_BATCH, "--model.backbone.depth", "1"),
    "ae": NO_PLOTS,
    "dae": NO_PLOTS,
    "vqvae": NO_PLOTS,
    # The config trains one epoch; the tiny MNIST's is two batches of 16, and the resume check takes a third.
    "conv_from_scratch": (*NO_PLOTS, "--trainer.max_epochs", "2"),
    "gan": (*SMALL_BATCH, "--model.inversion_steps", "5"),  # sample.py --invert searches the latents by Adam
    "realnvp": (*NO_PLOTS, "--model.stage_couplings", "1", "--model.final_couplings", "1"),
    "ldm": (*SMALL_BATCH, *TINY_LDM, "--trainer.callbacks", EMA_ONLY),
}  # fmt: skip
DRAWS_AT_TEST = {"dae", "vae"}  # test steps that draw random numbers (a corruption, z ~ q(z|x))
IMAGE_SIDE = 28  # the tiny MNIST's


def image_side(model) -> int:
    """The side of the model's images: the tiny MNIST's, or the size a config resizes its data to."""
    return tuple(model.hparams.get("image_shape") or (1, IMAGE_SIDE, IMAGE_SIDE))[-1]


def tiny_flags(name: str) -> tuple[str, ...]:
    return TINY.get(name, SMALL_BATCH)


def figures(text: str) -> dict[str, str]:
    """The `  name = value` lines that fit.py and evaluate.py print."""
    return dict(line.strip().split(" = ", 1) for line in text.splitlines() if " = " in line)


def fit_quietly(cwd: Path, *args: str):
    saved = {k: os.environ.pop(k) for k in [n for n in os.environ if n.startswith("LIGHTNING_ZOO_")]}
    try:
        return fit_in_process_at(cwd, *args)
    finally:
        os.environ.update(saved)


def prerequisites(name: str, vqvae_checkpoint: Path) -> tuple[str, ...]:
    """The flags a model cannot run without: a latent model's autoencoder (conftest's untrained VQ-VAE)."""
    takes = inspect.signature(model_class(name)).parameters
    return ("--model.vqvae_checkpoint", str(vqvae_checkpoint)) if "vqvae_checkpoint" in takes else ()


class Fitted:
    """One model's two-step run: its folder, its last.ckpt and the test metrics fit.py printed."""

    def __init__(self, name: str, root: Path, cwd: Path, *extra: str, needs: tuple[str, ...] = ()) -> None:
        self.name, self.root, self.cwd, self.needs = name, root, cwd, needs
        result = fit_quietly(cwd, *self.args(*extra))
        assert result.returncode == 0, result.stderr[-3000:]
        self.ckpt = cwd / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
        assert self.ckpt.is_file(), result.stdout[-2000:]
        self.test_metrics = figures(result.stdout)

    def args(self, *extra: str) -> tuple[str, ...]:
        return ("--model", self.name, *self.root_flag(), *FIT, *tiny_flags(self.name), *self.needs, *extra)

    def root_flag(self) -> list[str]:
        """`--data.root DIR` for data read from files; none for data that has no root (an environment)."""
        datamodule = import_class(read_config(self.name)["data"]["class_path"])
        return ["--data.root", str(self.root)] if "root" in inspect.signature(datamodule).parameters else []


@pytest.fixture(scope="module")
def fitted(module_data_root: Path, tmp_path_factory: pytest.TempPathFactory, vqvae_checkpoint: Path):
    """`fitted(name)`: the model's Fitted run, made on first use and shared by the module's tests."""
    runs: dict[str, Fitted] = {}

    def get(name: str) -> Fitted:
        if name not in runs:
            needs = prerequisites(name, vqvae_checkpoint)
            runs[name] = Fitted(name, module_data_root, tmp_path_factory.mktemp(name), needs=needs)
        return runs[name]

    return get


@pytest.mark.parametrize("name", model_names())
def test_evaluate_prints_the_test_metrics(name: str, fitted, tmp_path: Path, capsys) -> None:
    run = fitted(name)
    capsys.readouterr()
    assert evaluate.main(["--ckpt", str(run.ckpt), *run.root_flag(), "--json", str(tmp_path / "figures.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{type(load_model(run.ckpt)).__name__} from {run.ckpt}")
    shown = figures(printed)
    # The test loop's metrics are those fit.py printed after training (evaluate() may add figures of its own,
    # without the test/ prefix). The same weights on the same test batches on a CPU give the same bits, so the
    # same 4 printed decimals, but for a model that draws in its test step (a VAE's z, a DAE's corruption):
    # evaluate.py seeds the test loop with 0, fit.py's runs on from training's random state.
    assert run.test_metrics, "fit.py printed no test metric"
    assert {k for k in shown if k.startswith("test/")} == set(run.test_metrics)
    if name not in DRAWS_AT_TEST:
        assert {k: shown[k] for k in run.test_metrics} == run.test_metrics
    # --json holds what was printed, unrounded: each printed figure is its value to 4 decimals.
    written = json.loads((tmp_path / "figures.json").read_text())
    assert written.pop("model") == type(load_model(run.ckpt)).__name__ and written.pop("checkpoint") == str(run.ckpt)
    assert written.keys() == shown.keys()
    assert all(shown[k] == (f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in written.items())


@pytest.mark.parametrize("name", model_names())
def test_sample_or_refuse_in_one_line(name: str, fitted, tmp_path: Path, capsys) -> None:
    run = fitted(name)
    model = load_model(run.ckpt)
    capsys.readouterr()
    if not missing(model, GeneratesText):
        assert sample.main(["--ckpt", str(run.ckpt), "--prompt", "Winston", "--max_new_tokens", "12"]) == 0
        text = capsys.readouterr().out.rstrip("\n")
        assert text.startswith("Winston") and len(text) == len("Winston") + 12
        assert set(text) <= set(SAMPLE_TEXT)  # the vocabulary came back from the checkpoint
    elif not missing(model, Samples):
        out = tmp_path / "grid.png"
        assert sample.main(["--ckpt", str(run.ckpt), "--n", "4", "--out", str(out)]) == 0
        assert str(out) in capsys.readouterr().out
        if model.hparams.get("image_shape") is None:  # a model of points: a 6 x 6 inch scatter plot at 100 dpi
            assert Image.open(out).size == (600, 600)
        else:  # make_grid's layout: 2 x 2 images with 2-pixel padding around and between them.
            assert Image.open(out).size == (2 * image_side(model) + 3 * 2,) * 2
    else:
        assert sample.main(["--ckpt", str(run.ckpt), "--n", "4", "--out", str(tmp_path / "grid.png")]) == 2
        error = capsys.readouterr().err.strip().splitlines()
        assert error == [
            f"sample.py: error: {type(model).__name__} cannot be used for sample.py (or GeneratesText for --prompt): "
            "it has no sample() (the Samples contract, lightning_modules/protocols.py)"
        ]


@pytest.mark.parametrize("name", model_names())
def test_invert_where_the_model_encodes(name: str, fitted, tmp_path: Path, capsys) -> None:
    run = fitted(name)
    model = load_model(run.ckpt)
    out = tmp_path / "inverted.png"
    capsys.readouterr()
    code = sample.main(["--ckpt", str(run.ckpt), "--n", "2", "--invert", "--out", str(out), *run.root_flag()])
    printed = capsys.readouterr()
    if not missing(model, GeneratesText):
        assert code == 2 and printed.err.strip().splitlines() == [
            f"sample.py: error: {type(model).__name__} generates text: --invert is for image models; drop it"
        ]
    elif not missing(model, Encodes):
        assert code == 0, printed.err
        assert "reconstruction MSE" in printed.out
        # Rows of originals, codes (shown only when they are images: a pixel diffusion model's noise, not a grid
        # of latent vectors) and regenerations, 2 columns of 28-pixel images with 2-pixel padding around and
        # between them.
        side = image_side(model)
        image = torch.rand(1, *(model.hparams.get("image_shape") or (1, side, side)))
        with torch.no_grad():
            codes_are_images = model.encode(image).shape == image.shape
        rows = 3 if codes_are_images else 2
        assert Image.open(out).size == (2 * side + 3 * 2, rows * side + (rows + 1) * 2)
    else:
        assert code == 2 and printed.err.strip().splitlines() == [
            f"sample.py: error: {type(model).__name__} cannot be used for sample.py --invert: it has no encode(), "
            "decode() (the Encodes contract, lightning_modules/protocols.py)"
        ]


@pytest.mark.parametrize("name", model_names())
def test_predict_writes_a_row_per_test_example_or_refuses(name: str, fitted) -> None:
    """`lightning-zoo predict --ckpt_path CKPT`: one row per example of the test split, in its order, from the
    checkpoint's weights; a model without a predict_step is refused in one line."""
    run = fitted(name)
    model = load_model(run.ckpt)
    args = ("predict", *run.args("--ckpt_path", str(run.ckpt)))
    result = script_in_process_at("zoo.cli", run.cwd, *args)
    if type(model).predict_step is L.LightningModule.predict_step:
        assert f"{type(model).__name__} has no predict_step" in one_error_line(result)
        return
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("  predictions: ")]
    rows = torch.load(run.cwd / path, weights_only=True)
    datamodule = load_datamodule(run.ckpt, root=run.root)
    n_test = len(datamodule.dataset("test"))
    assert rows and all(len(column) == n_test for column in rows.values())
    # The first rows again, from the checkpoint's model in this process. The CLI predicted them in batches of the
    # DataModule's size, this in a batch of 4, and the CPU's convolution kernels may sum in another order for
    # another batch size (the VQ-VAE's rows differ by 9e-8 on some CPUs). So float rows are held to assert_close's
    # float32 defaults, rtol 1.3e-6 (about ten ulps) and atol 1e-5, which such reordering stays under and a wrong
    # weight or a shifted row does not; integer rows (labels, codes) must match exactly.
    batch = datamodule.batch("test", n=4)
    with torch.no_grad():
        expected = model.eval().predict_step(batch, 0)
    for key, column in expected.items():
        if key not in STOCHASTIC_PREDICTIONS:
            torch.testing.assert_close(rows[key][:4], column)


# Predictions that draw a sample: a VAE's -ELBO takes one z ~ q(z|x).
STOCHASTIC_PREDICTIONS = {"neg_elbo_nats"}


@pytest.mark.parametrize("name", model_names())
def test_resume_takes_one_more_batch(name: str, fitted) -> None:
    run = fitted(name)
    checkpoint = read_checkpoint(run.ckpt)
    saved, batches = checkpoint["global_step"], trained_batches(checkpoint)
    assert saved > 0 and batches > 0
    one_more = (
        "--ckpt_path",
        str(run.ckpt),
        "--trainer.max_steps",
        str(saved + 1),
        "--trainer.limit_test_batches",
        "1",
    )
    result = fit_quietly(run.cwd, *run.args(*one_more))
    assert result.returncode == 0, result.stderr[-3000:]
    # The newest version: the shared run folder may hold others (a predict run writes one).
    newest = max((run.cwd / "runs" / name).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    resumed = read_checkpoint(newest)
    # One more training batch, of as many optimiser steps as each batch of the first run took (one, or for a
    # model that steps its optimiser itself, such as PPO over a rollout's minibatches, several).
    assert trained_batches(resumed) == batches + 1
    assert resumed["global_step"] == saved + saved // batches


def trained_batches(checkpoint: dict) -> int:
    """The training batches a checkpoint's run completed, as Lightning's fit loop counts them."""
    return checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"]


# Registered models without `--model.compile`, and why: nothing in them that torch.compile would speed up.
NOT_COMPILED = {
    PixelGraph: "one learned matrix product: no network to compile",
    StochasticMLPClassifier: "trains through the backbone's sample_logits, not its forward, which compile wraps",
}


def test_every_family_offers_compile() -> None:
    """--model.compile exists for every registered model class but those NOT_COMPILED names (with the reason)."""
    without = {model_class(n) for n in model_names()} - set(NOT_COMPILED)
    assert [c.__name__ for c in without if "compile" not in inspect.signature(c).parameters] == []


def drawn(shape, normal: bool = False):
    """An input factory: one seeded tensor of the model-dependent `shape(model)`, uniform in [0, 1) or normal."""
    return lambda model: ((torch.randn if normal else torch.rand)(shape(model), generator=SEEDED()),)


image = drawn(lambda model: (2, *model.hparams.image_shape))


def edm_input(model: L.LightningModule) -> tuple[torch.Tensor, ...]:
    labels = torch.tensor([0, 1]) if model.hparams.class_conditional else None
    return *image(model), torch.tensor([0.5, 2.0]), labels


# For each model class with a `compile` flag: one of its compiled networks (a dotted attribute) and the inputs of
# that network's forward. DDPM's compiled checkpoint is tests/test_ddpm.py's; NCSN and the latent diffusion compile
# the same U-Net.
COMPILED_INPUTS = {
    GPT: ("transformer", lambda model: (torch.randint(0, model.hparams.vocab_size, (2, 16), generator=SEEDED()),)),
    ImageClassifier: ("backbone", image),
    Autoencoder: ("encoder", image),
    VAE: ("encoder", image),
    VQVAE: ("encoder", image),
    EDM: ("denoiser", edm_input),
    RealNVP: ("flow", image),
    DCGAN: ("generator", drawn(lambda model: (2, model.hparams.latent_dim), normal=True)),
    SimCLR: ("backbone", image),
    GraphClassifier: ("head", drawn(lambda model: (5, model.hparams.hidden), normal=True)),
    PPO: ("agent.actor_trunk", drawn(lambda model: (2, *model.agent.observation_shape), normal=True)),
    ComparativeNetwork: ("embedder", image),
    StagedNetwork: ("bodies.0", drawn(lambda model: (2, math.prod(model.hparams.image_shape)))),
}
SEEDED = lambda: torch.Generator().manual_seed(0)  # noqa: E731
# One registered name per class, and every graph layer kind: each compiles another graph (GCN's sparse product
# stays eager).
COMPILED = sorted({*{model_class(n): n for n in reversed(model_names()) if model_class(n) in COMPILED_INPUTS}.values(),
                   "gcn", "mpnn"})  # fmt: skip


def test_every_compiled_family_is_round_tripped() -> None:
    """Each class with the flag has its compiled checkpoint checked below, or is a subclass of one that has (its
    compile code is the parent's); DDPM and the classes that build its U-Net (NCSN, latent diffusion) are checked
    in tests/test_ddpm.py."""
    flagged = {c for c in (model_class(n) for n in model_names()) if "compile" in inspect.signature(c).parameters}
    covered = (*COMPILED_INPUTS, DDPM, NCSN)
    assert sorted(c.__name__ for c in flagged if not issubclass(c, covered)) == []


@pytest.mark.slow  # torch.compile on CPU: about a minute a model for the training, validation and test shapes
@pytest.mark.parametrize("name", COMPILED)
def test_compiled_checkpoint_loads_with_the_same_outputs(name: str, module_data_root: Path, tmp_path: Path) -> None:
    run = Fitted(name, module_data_root, tmp_path, "--model.compile", "true")
    assert not [key for key in read_checkpoint(run.ckpt)["state_dict"] if "_orig_mod" in key]  # the plain keys
    model = load_model(run.ckpt).eval()
    assert model.hparams.compile
    attribute, make_input = COMPILED_INPUTS[type(model)]
    network, inputs = model.get_submodule(attribute), make_input(model)
    with torch.no_grad():
        # The loaded network compiled in place (its call goes through torch.compile) against the same weights
        # run eagerly: the module's own forward, which the compiled call wraps.
        assert network._compiled_call_impl is not None
        fast, slow = network(*inputs), network.forward(*inputs)
    # The compiled kernels fuse and reorder float32 operations: agreement to the float32 rounding of sums of a
    # few dozen to a few hundred products (~1e-7 relative each), well inside rtol 1e-4 / atol 1e-5 on outputs of
    # order 1.
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
