"""All the activations at once: the features are cut into slices and each slice goes through its own
nonlinearity, side by side, so that training can pick which ones the next layer uses."""

import torch
import torch.nn.functional as F
from torch import nn

# The branches in slice order; `ParallelActivations.slices` gives each one's feature range.
BRANCHES = ("identity", "relu", "gelu", "sigmoid", "leaky_relu", "logsigmoid", "softmax4", "softmax8", "conv1d")
GROUPED_SOFTMAX = {"softmax4": 4, "softmax8": 8}
SLICE_MULTIPLE = 8  # every slice splits into whole groups of both softmax sizes


def grouped_softmax(x: torch.Tensor, group: int) -> torch.Tensor:
    """Softmax over consecutive groups of `group` features of the last dimension."""
    return F.softmax(x.unflatten(-1, (-1, group)), dim=-1).flatten(-2)


class ParallelActivations(nn.Module):
    """Identity, ReLU, GELU, sigmoid, LeakyReLU, LogSigmoid, grouped softmax (groups of 4 and of 8, each over a
    fixed random permutation of its slice) and a 3-tap 1-D convolution along its slice, each applied to one slice
    of the (..., features) input, concatenated back in the same order. The slices are equal, a multiple of 8 wide;
    what is left over goes to the identity. The permutations are buffers: a checkpoint keeps them."""

    def __init__(self, features: int, seed: int = 0) -> None:
        """
        Args:
            features: width of the input (and output); at least 72, nine slices of 8.
            seed: seed of the softmax branches' permutations.
        """
        super().__init__()
        share = features // len(BRANCHES) // SLICE_MULTIPLE * SLICE_MULTIPLE
        if share == 0:
            raise ValueError(
                f"the all-activations block needs at least {len(BRANCHES) * SLICE_MULTIPLE} features "
                f"({len(BRANCHES)} slices of {SLICE_MULTIPLE}), got {features}; widen the layer"
            )
        sizes = [features - share * (len(BRANCHES) - 1)] + [share] * (len(BRANCHES) - 1)
        bounds = torch.tensor([0, *sizes]).cumsum(0).tolist()
        self.slices = {name: slice(bounds[i], bounds[i + 1]) for i, name in enumerate(BRANCHES)}
        generator = torch.Generator().manual_seed(seed)
        for name in GROUPED_SOFTMAX:
            self.register_buffer(f"{name}_permutation", torch.randperm(share, generator=generator))
        self.conv = nn.Conv1d(1, 1, kernel_size=3, padding=1)

    def permuted_softmax(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Softmax over groups of permuted features, put back in the input's order: each group gathers features
        from across the slice rather than neighbours."""
        permutation = getattr(self, f"{name}_permutation")
        grouped = grouped_softmax(x[..., permutation], GROUPED_SOFTMAX[name])
        return torch.empty_like(grouped).index_copy_(-1, permutation, grouped)

    def branch(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name in GROUPED_SOFTMAX:
            return self.permuted_softmax(x, name)
        if name == "conv1d":
            return self.conv(x.reshape(-1, 1, x.shape[-1])).reshape(x.shape)
        functions = {
            "identity": lambda v: v,
            "relu": F.relu,
            "gelu": F.gelu,
            "sigmoid": torch.sigmoid,
            "leaky_relu": F.leaky_relu,
            "logsigmoid": F.logsigmoid,
        }
        return functions[name](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch(name, x[..., part]) for name, part in self.slices.items()], dim=-1)


def branch_weight_norms(block: ParallelActivations, next_weight: torch.Tensor) -> dict[str, float]:
    """How much the layer after `block` leans on each branch: the mean L2 norm of the columns of its (out, in)
    weight that read the branch's slice (a column per input feature, so branches of different widths compare)."""
    norms = next_weight.detach().float().norm(dim=0)
    return {name: float(norms[part].mean()) for name, part in block.slices.items()}
