"""The nonlinearities a network can be built with, by name: one table for every network that takes an
`activation` option."""

from torch import nn

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
