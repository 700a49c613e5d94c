"""The nonlinearities a network can be built with, by name: one table for every network that takes an
`activation` option."""

from torch import nn

from lightning_modules.blocks.parallel_activations import ParallelActivations

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
}


def activation_class(name: str, flag: str = "--model.activation") -> type[nn.Module]:
    """The module class of activation `name`; an unknown name is one error line naming `flag`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{flag} must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


# Activations that are built for a width (their parameters or slices depend on it): MLP layers only.
WIDTH_ACTIVATIONS: dict[str, type[nn.Module]] = {"all": ParallelActivations}


def activation_for_width(name: str, features: int, flag: str = "--model.activation") -> nn.Module:
    """An activation module for `features`-wide inputs: one of ACTIVATIONS or WIDTH_ACTIVATIONS by name."""
    if name in WIDTH_ACTIVATIONS:
        return WIDTH_ACTIVATIONS[name](features)
    if name not in ACTIVATIONS:
        raise ValueError(f"{flag} must be one of {', '.join([*ACTIVATIONS, *WIDTH_ACTIVATIONS])}, got {name!r}")
    return ACTIVATIONS[name]()
