"""The model contracts: a registered model that has a contract's method name has the contract's signature
(an internal helper that happens to share the name would be called by a script and fail), and `require`
names exactly what is missing."""

import inspect

import pytest
import torch

from lightning_modules.protocols import CONTRACTS, Encodes, Samples, members, missing, require
from lightning_modules.registry import model_classes


def contract_methods():
    for protocol in CONTRACTS:
        for name in members(protocol):
            if callable(vars(protocol).get(name)):
                yield protocol, name


def accepts(implementation, contract) -> list[str]:
    """What is wrong with `implementation` as the contract's method: each parameter the contract passes must
    exist under its name, and every other parameter must have a default."""
    wanted = [p for p in inspect.signature(contract).parameters.values() if p.name != "self"]
    given = inspect.signature(implementation).parameters
    problems = [f"no parameter {p.name!r}" for p in wanted if p.kind is not p.VAR_KEYWORD and p.name not in given]
    named = {p.name for p in wanted}
    problems += [
        f"parameter {p.name!r} has no default"
        for p in given.values()
        if p.name != "self"
        and p.name not in named
        and p.default is p.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return problems


@pytest.mark.parametrize("cls", sorted(model_classes(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_contract_names_are_used_for_the_contracts_only(cls):
    for protocol, name in contract_methods():
        implementation = getattr(cls, name, None)
        if implementation is None or not callable(implementation):
            continue
        problems = accepts(implementation, vars(protocol)[name])
        assert not problems, f"{cls.__name__}.{name} is not the {protocol.__name__} contract: {problems}"


@pytest.mark.parametrize("cls", sorted(model_classes(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_resumable_changes_name_the_models_own_hyperparameters(cls):
    # A misspelt name would silently let nothing through (and name nothing the user can pass).
    arguments = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(getattr(cls, "RESUMABLE_CHANGES", ())) <= arguments


def test_the_signature_check_catches_a_helper_with_a_contract_name():
    class Clash:
        def evaluate(self, batch, stage, accuracy): ...

    from lightning_modules.protocols import Evaluates

    assert accepts(Clash.evaluate, Evaluates.evaluate) == [
        "no parameter 'datamodule'",
        "parameter 'batch' has no default",
        "parameter 'stage' has no default",
        "parameter 'accuracy' has no default",
    ]


def test_require_names_the_missing_methods():
    class HalfAutoencoder(torch.nn.Module):
        def encode(self, x):
            return x

    model = HalfAutoencoder()
    assert missing(model, Encodes) == ["decode"]
    with pytest.raises(ValueError, match=r"HalfAutoencoder cannot be used for a latent walk: it has no decode\(\)"):
        require(model, Encodes, "a latent walk")
    with pytest.raises(ValueError, match=r"has no sample\(\) \(the Samples contract"):
        require(model, Samples, "a sample grid")
    require(model, type("Nothing", (), {}), "anything")  # an empty contract is always met


@pytest.mark.parametrize(
    ("callback", "method"),
    [
        ("callbacks.reconstruction_grid.ReconstructionGrid", "encode"),
        ("callbacks.latent_embedding.LatentEmbedding", "encode"),
        ("callbacks.latent_walk.LatentWalk", "encode"),
        ("callbacks.inversion_error.InversionError", "encode"),
        ("callbacks.sample_grid.SampleGrid", "sample"),
        ("callbacks.text_samples.TextSamples", "generate"),
    ],
)
def test_each_callback_refuses_a_model_without_its_contract_in_one_line(callback, method):
    import lightning as L

    from lightning_modules.registry import import_class

    class Bare(L.LightningModule):
        pass

    with pytest.raises(ValueError, match=rf"^Bare cannot be used for .*: it has no {method}\(\)"):
        import_class(callback)().setup(None, Bare(), "fit")
