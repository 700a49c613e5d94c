"""The model contracts: what callbacks and scripts may call on a LightningModule, as runtime-checkable
Protocols. A model takes part in a callback or a script by having the methods of the protocol it needs; it
declares nothing. A caller checks with `require(model, Protocol, "what for")`, which names the missing
methods in one line.

No model may use one of these method names for anything else (an internal helper called `evaluate` or
`sample` would be mistaken for the contract); tests/test_protocols.py checks every registered model.
"""

from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from torch import Tensor


@runtime_checkable
class Encodes(Protocol):
    """An encoder-decoder: `encode` maps images in [0, 1], (B, C, H, W), to codes of any shape, and `decode`
    maps codes back to images in [0, 1] (deterministically). Used by ReconstructionGrid, LatentWalk,
    LatentEmbedding and `sample.py --invert`."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@runtime_checkable
class Samples(Protocol):
    """A generative model: `sample(n)` draws n images in [0, 1] (or n points). Extra keyword arguments
    (sampler, steps, eta, ...) are the model's own and optional. Used by SampleGrid and `sample.py`."""

    def sample(self, n: int) -> Tensor: ...


@runtime_checkable
class HasLikelihood(Protocol):
    """A likelihood model: `log_prob(x)` is the log-likelihood in nats of each image x (B, C, H, W) in [0, 1], shape
    (B,) (for a dequantised flow, its bound from one noise draw). Used by LikelihoodRanking."""

    def log_prob(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Inpaints(Protocol):
    """Completes images x in [0, 1] where `mask` is 0 and keeps them where it is 1. Used by `sample.py --inpaint`."""

    def inpaint(self, x: Tensor, mask: Tensor) -> Tensor: ...


@runtime_checkable
class GeneratesText(Protocol):
    """A language model: continues prompts of token ids (B, T) by `max_new_tokens` and returns
    (B, T + max_new_tokens). Used by TextSamples and `sample.py --prompt`."""

    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor: ...


@runtime_checkable
class Embeds(Protocol):
    """A representation: `embed(x)` maps inputs to feature vectors (B, D), e.g. for a kNN evaluation."""

    def embed(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class Evaluates(Protocol):
    """Figures beyond the test loop's (a return over episodes, an FID over samples). `evaluate` gets the
    DataModule the model was trained with (set up for "test"; None for a model with no data) and the options
    the user gave; it returns `{name: value}`, printed by `evaluate.py` after the test metrics."""

    def evaluate(self, datamodule: L.LightningDataModule | None, **options: Any) -> dict[str, float]: ...


@runtime_checkable
class Renders(Protocol):
    """Frames (H, W, 3) uint8 of one episode or any sequence worth watching. Used by `evaluate.py --video`."""

    def render(self, seed: int = 0) -> list[np.ndarray]: ...


@runtime_checkable
class CountsThroughput(Protocol):
    """What the throughput is counted in (`throughput_unit`: samples, tokens, env_steps) and how many of them
    one training batch holds. A model without it is counted in samples, the batch's first dimension."""

    throughput_unit: str

    def count_throughput(self, batch: Any) -> int: ...


@runtime_checkable
class Benchmarked(Protocol):
    """`benchmark_metric`: the logged test metric that is the model's figure in `benchmark.py`'s row, e.g.
    "test/acc". A model without it is reported by its first test metric in name order."""

    benchmark_metric: str


@runtime_checkable
class PlaysEpisodes(Protocol):
    """A reinforcement-learning model: `reward_threshold` is the mean return that counts as solving its
    environment (None when it has none), and its `training_step` returns, beside "loss", "episode_returns"
    and "episode_env_steps": the returns of the episodes that ended in the step and the run's environment
    step at which each ended. Used by the SolvedAt callback (and so by `benchmark.py`'s solved-at figures)."""

    reward_threshold: float | None


@runtime_checkable
class ResumesWithChanges(Protocol):
    """`RESUMABLE_CHANGES`: the hyper-parameters (names of `__init__`'s arguments) that a run resumed with
    `--ckpt_path` may set differently from the checkpoint's, such as a schedule's cool-down; any other difference
    is refused, since it would train another network or objective than the one saved. Read by `--ckpt_path last`
    (zoo/resume.py) and by the check of a checkpoint given as a file (lightning_modules/checkpoint.py)."""

    RESUMABLE_CHANGES: frozenset[str]


CONTRACTS: tuple[type, ...] = (
    Encodes,
    Samples,
    HasLikelihood,
    Inpaints,
    GeneratesText,
    Embeds,
    Evaluates,
    Renders,
    CountsThroughput,
    Benchmarked,
    PlaysEpisodes,
    ResumesWithChanges,
)


def members(protocol: type) -> list[str]:
    """The attribute names a protocol asks for, in the order they are written."""
    names = [n for n in vars(protocol) if not n.startswith("_")]
    names += [n for n in getattr(protocol, "__annotations__", {}) if n not in names]
    return names


def missing(model: Any, protocol: type) -> list[str]:
    """The protocol's attributes that `model` lacks (methods must be callable)."""
    absent = []
    for name in members(protocol):
        value = getattr(model, name, None)
        wanted_callable = callable(vars(protocol).get(name))
        if value is None or (wanted_callable and not callable(value)):
            absent.append(name)
    return absent


def require(model: Any, protocol: type, purpose: str) -> None:
    """Raise a one-line ValueError naming what `model` lacks to serve `purpose` under `protocol`."""
    lacking = missing(model, protocol)
    if lacking:
        methods = ", ".join(f"{name}()" if callable(vars(protocol).get(name)) else name for name in lacking)
        raise ValueError(
            f"{type(model).__name__} cannot be used for {purpose}: it has no {methods} "
            f"(the {protocol.__name__} contract, lightning_modules/protocols.py)"
        )
