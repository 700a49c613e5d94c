"""An MLP classifier whose activation is every activation at once (blocks/parallel_activations.py), and the figure
that says which ones training chose: how strongly the next layer reads each branch."""

import lightning as L
from torch import nn

from lightning_modules.blocks.parallel_activations import ParallelActivations, branch_weight_norms
from lightning_modules.classifiers.classifier import ImageClassifier


def branch_usage(network: nn.Module) -> dict[str, float]:
    """For each ParallelActivations of `network` (in module order), the mean column norm of the first Linear
    after it, per branch: `layer{i}/{branch}`. Empty for a network without the block (a ReLU MLP)."""
    modules = list(network.modules())
    usage = {}
    blocks = [i for i, module in enumerate(modules) if isinstance(module, ParallelActivations)]
    for layer, index in enumerate(blocks):
        following = next((m for m in modules[index + 1 :] if isinstance(m, nn.Linear)), None)
        if following is None:
            raise ValueError(f"the all-activations block {layer} has no Linear layer after it to read its branches")
        usage |= {
            f"layer{layer}/{name}": norm for name, norm in branch_weight_norms(modules[index], following.weight).items()
        }
    return usage


class AllActivationsClassifier(ImageClassifier):
    """ImageClassifier (any backbone, by default an MLP with `activation: all`) whose evaluation also reports the
    next layer's weight column norm per activation branch."""

    def evaluate(self, datamodule: L.LightningDataModule | None) -> dict[str, float]:
        """Which branches the trained network leans on: `lean/layer{i}/{branch}`, the mean column norm of the
        weights that read the branch (no data needed)."""
        return {f"lean/{name}": value for name, value in branch_usage(self.backbone).items()}
