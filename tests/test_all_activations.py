"""The all-activations block: each slice gets exactly its function, the softmax permutations are fixed and travel
in the state_dict, the shapes, the per-branch weight norms, and the MLP classifier that uses it through fit.py."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.activations import activation_for_width
from lightning_modules.blocks.parallel_activations import BRANCHES, ParallelActivations, branch_weight_norms
from lightning_modules.blocks.small_nets import MLP
from lightning_modules.experiments.all_activations import AllActivationsClassifier, branch_usage

ELEMENTWISE = {
    "identity": lambda x: x,
    "relu": torch.relu,
    "gelu": nn.GELU(),
    "sigmoid": nn.Sigmoid(),
    "leaky_relu": nn.LeakyReLU(),
    "logsigmoid": nn.LogSigmoid(),
}


def test_each_slice_gets_exactly_its_function():
    torch.manual_seed(0)
    block = ParallelActivations(288)
    x = torch.randn(3, 5, 288) * 3
    out = block(x)
    for name, function in ELEMENTWISE.items():
        part = block.slices[name]
        torch.testing.assert_close(out[..., part], function(x[..., part]), rtol=0, atol=0)  # the same kernel
    for name, group in (("softmax4", 4), ("softmax8", 8)):
        part, permutation = block.slices[name], getattr(block, f"{name}_permutation")
        grouped = out[..., part][..., permutation].unflatten(-1, (-1, group))  # the groups the block formed
        expected = torch.softmax(x[..., part][..., permutation].unflatten(-1, (-1, group)), dim=-1)
        # The same softmax kernel on the same rows: equal to the bit.
        torch.testing.assert_close(grouped, expected, rtol=0, atol=0)
    part = block.slices["conv1d"]
    rows = x[..., part].reshape(-1, 1, 32)
    expected = F.conv1d(rows, block.conv.weight, block.conv.bias, padding=1).reshape(3, 5, 32)
    torch.testing.assert_close(out[..., part], expected, rtol=0, atol=0)


def test_the_permutations_are_fixed_and_saved():
    first, second = ParallelActivations(144, seed=0), ParallelActivations(144, seed=0)
    other = ParallelActivations(144, seed=1)
    for name in ("softmax4_permutation", "softmax8_permutation"):
        assert name in first.state_dict()
        assert torch.equal(first.state_dict()[name], second.state_dict()[name])
        assert not torch.equal(first.state_dict()[name], torch.arange(16))  # a real shuffle
    assert not torch.equal(first.softmax4_permutation, other.softmax4_permutation)
    other.load_state_dict(first.state_dict())  # a checkpoint brings its permutations
    x = torch.randn(4, 144)
    assert torch.equal(other(x), first(x))


@pytest.mark.parametrize(("features", "identity"), [(72, 8), (100, 36), (288, 32)])
def test_shapes_and_slices(features, identity):
    block = ParallelActivations(features)
    assert block(torch.randn(2, features)).shape == (2, features)
    parts = list(block.slices.values())
    assert list(block.slices) == list(BRANCHES)
    assert parts[0] == slice(0, identity) and parts[-1].stop == features
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
    assert all((p.stop - p.start) % 8 == 0 and p.stop > p.start for p in parts[1:])


def test_too_narrow_a_layer_is_one_clear_error():
    with pytest.raises(ValueError, match="needs at least 72 features .* got 40; widen the layer"):
        MLP((1, 28, 28), 10, widths=(40,), activation="all")
    with pytest.raises(ValueError, match="--model.backbone.activation must be one of relu.*all, got 'swish'"):
        activation_for_width("swish", 64, "--model.backbone.activation")


def test_branch_weight_norms_per_branch():
    block = ParallelActivations(72)
    # Column j of the next weight reads feature j: give branch i's columns the norm i + 1 (two rows of (i+1)/sqrt 2).
    columns = torch.cat([torch.full((8,), float(i + 1)) for i in range(len(BRANCHES))])
    weight = (columns / 2**0.5).expand(2, 72)
    norms = branch_weight_norms(block, weight)
    assert list(norms) == list(BRANCHES)
    for i, name in enumerate(BRANCHES):
        assert norms[name] == pytest.approx(i + 1, rel=1e-6)  # float32 sqrt of a sum of two squares


def test_branch_usage_reads_the_layer_after_each_block():
    network = MLP((1, 4, 4), 3, widths=(72, 72), activation="all")
    with torch.no_grad():
        network[3].weight.zero_()
        network[3].weight[:, network[2].slices["gelu"]] = 1.0
    usage = branch_usage(network)
    assert len(usage) == 2 * len(BRANCHES)
    assert usage["layer0/gelu"] == pytest.approx(72**0.5) and usage["layer0/relu"] == 0  # 72 rows of ones
    assert usage["layer1/relu"] == pytest.approx(float(network[5].weight.detach()[:, 8:16].norm(dim=0).mean()))
    relu_model = AllActivationsClassifier(lambda shape, n: MLP(shape, n, widths=(72,)), image_shape=(1, 4, 4))
    assert relu_model.evaluate(None) == {}


@pytest.mark.parametrize("activation", ["all", "relu"])
def test_fast_dev_run(activation, data_root, fit_in_process):
    result = fit_in_process(
        "--model", "all_activations", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16", "--model.backbone.activation", activation,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc = " in result.stdout
