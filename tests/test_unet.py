"""The denoising networks: U-Net shapes and conditioning, the timestep embedding, attention against a naive
computation, the independent heads of MultiHeadUNet, the MLP denoiser and the argument errors."""

import math

import pytest
import torch
from torch import nn

from lightning_modules.blocks.conditioning import TimeClassEmbedding, timestep_embedding
from lightning_modules.blocks.mlp_denoiser import MLPDenoiser
from lightning_modules.blocks.unet import AttentionBlock, MultiHeadUNet, UNet

SMALL = {"base_channels": 8, "num_heads": 2}


def perturb_output(model: UNet) -> None:
    """Give the zero-initialised output conv random weights, so the output depends on the input."""
    nn.init.normal_(model.output[-1].weight, std=0.1)


@pytest.mark.parametrize(
    ("channels", "size", "mults", "num_classes"),
    [
        (1, 28, (1, 2, 2), None),
        (1, 28, (1, 2, 2), 10),
        (3, 32, (1, 2, 2), None),
        (3, 32, (1, 2, 2), 10),
        (1, 28, (1, 2, 2, 2), 10),  # 28 -> 14 -> 7 -> 4 and back
        (3, 32, (1, 1, 1, 1, 1), None),  # 32 -> 2
    ],
)
def test_unet_output_shape(channels: int, size: int, mults: tuple[int, ...], num_classes: int | None) -> None:
    model = UNet(in_channels=channels, channel_mults=mults, num_classes=num_classes, **SMALL)
    x, t = torch.randn(2, channels, size, size), torch.tensor([0, 999])
    y = torch.tensor([3, 7]) if num_classes else None
    assert model(x, t, y).shape == (2, channels, size, size)


def test_unet_out_channels_and_zero_start() -> None:
    model = UNet(in_channels=3, out_channels=6, **SMALL)
    out = model(torch.randn(2, 3, 32, 32), torch.tensor([5, 50]))
    assert out.shape == (2, 6, 32, 32)
    assert torch.count_nonzero(out) == 0  # the zero output conv: the untrained model predicts 0


def test_unet_depends_on_t_and_labels() -> None:
    torch.manual_seed(0)
    model = UNet(num_classes=10, **SMALL).eval()
    perturb_output(model)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 10])
    base = model(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(base, model(x, t, torch.tensor([2, 2])), atol=1e-6)
    assert not torch.allclose(base, model(x, torch.tensor([500, 500]), torch.tensor([1, 1])), atol=1e-6)
    assert not torch.allclose(base, model(x, t), atol=1e-6)  # no labels: the reserved "no label" embedding


def test_unet_batch_elements_independent() -> None:
    torch.manual_seed(0)
    model = UNet(**SMALL).eval()
    perturb_output(model)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([1, 200, 900])
    together = model(x, t)
    alone = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_timestep_embedding() -> None:
    t = torch.tensor([0, 1, 10, 999])
    embedding = timestep_embedding(t, 32)
    assert embedding.shape == (4, 32) and embedding.dtype == torch.float32
    assert torch.cdist(embedding, embedding).fill_diagonal_(1.0).min() > 1e-3  # every t its own embedding
    torch.testing.assert_close(timestep_embedding(t.float(), 32), embedding)
    # t = 0: cos = 1, sin = 0; the first frequency is 1, so column 0 is cos(t)
    torch.testing.assert_close(embedding[0], torch.cat([torch.ones(16), torch.zeros(16)]))
    torch.testing.assert_close(embedding[:, 0], torch.cos(t.float()))
    assert timestep_embedding(t, 7).shape == (4, 7)


def test_attention_matches_naive_softmax() -> None:
    torch.manual_seed(0)
    block = AttentionBlock(channels=8, num_heads=2)
    nn.init.normal_(block.proj.weight, std=0.3)
    x = torch.randn(2, 8, 3, 5)
    b, c, h, w = x.shape
    heads, d = 2, 4
    qkv = nn.functional.conv2d(block.norm(x), block.qkv.weight, block.qkv.bias).reshape(b, 3 * c, h * w)
    q, k, v = (qkv[:, i * c : (i + 1) * c].reshape(b, heads, d, h * w) for i in range(3))
    expected = torch.zeros(b, heads, d, h * w)
    for n in range(b):
        for head in range(heads):
            scores = q[n, head].T @ k[n, head] / math.sqrt(d)  # (tokens, tokens)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            weights = weights / weights.sum(dim=1, keepdim=True)
            expected[n, head] = (weights @ v[n, head].T).T
    attended = expected.reshape(b, c, h, w)
    expected_out = x + nn.functional.conv2d(attended, block.proj.weight, block.proj.bias)
    torch.testing.assert_close(block(x), expected_out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mix", ["mean", "conv"])
def test_multihead_shapes(mix: str) -> None:
    model = MultiHeadUNet(heads=3, mix=mix, in_channels=3, **SMALL)
    assert model(torch.randn(2, 3, 16, 16), torch.tensor([1, 2])).shape == (2, 3, 16, 16)


def test_multihead_heads_share_nothing_and_have_independent_gradients() -> None:
    torch.manual_seed(0)
    model = MultiHeadUNet(heads=3, mix="conv", **SMALL)
    for head in model.heads:
        perturb_output(head)
    pointers = [{p.data_ptr() for p in head.parameters()} for head in model.heads]
    assert all(pointers[i].isdisjoint(pointers[j]) for i in range(3) for j in range(i + 1, 3))
    outputs = model.forward_heads(torch.randn(2, 1, 16, 16), torch.tensor([3, 300]))
    outputs[1].square().mean().backward()
    for i, head in enumerate(model.heads):
        grads = [p.grad for p in head.parameters() if p.grad is not None]
        if i == 1:
            assert any(g.abs().sum() > 0 for g in grads)
        else:
            assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_multihead_mean_is_mean_of_heads_and_conv_starts_as_mean() -> None:
    torch.manual_seed(0)
    model = MultiHeadUNet(heads=2, mix="mean", **SMALL).eval()
    for head in model.heads:
        perturb_output(head)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([7, 70])
    expected = (model.heads[0](x, t) + model.heads[1](x, t)) / 2
    torch.testing.assert_close(model(x, t), expected)
    conv = MultiHeadUNet(heads=2, mix="conv", **SMALL).eval()
    conv.heads.load_state_dict(model.heads.state_dict())
    torch.testing.assert_close(conv(x, t), expected, rtol=1e-5, atol=1e-6)


def test_mlp_denoiser() -> None:
    torch.manual_seed(0)
    model = MLPDenoiser(data_dim=3, hidden=32, depth=2, time_dim=16, num_classes=4)
    x = torch.randn(5, 3)
    out = model(x, torch.full((5,), 10))
    assert out.shape == (5, 3)
    assert not torch.allclose(out, model(x, torch.full((5,), 900)))
    assert not torch.allclose(out, model(x, torch.full((5,), 10), torch.zeros(5, dtype=torch.long)))
    assert MLPDenoiser()(torch.randn(4, 2), torch.rand(4) * 1000).shape == (4, 2)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: UNet(attention_levels=(3,)), "attention_levels"),
        (lambda: UNet(base_channels=32, num_heads=3), "num_heads"),
        (lambda: UNet(num_res_blocks=0), "num_res_blocks"),
        (lambda: UNet(channel_mults=()), "channel_mults"),
        (lambda: MultiHeadUNet(heads=0), "heads"),
        (lambda: MultiHeadUNet(heads=2, mix="max"), "mix"),
        (lambda: MLPDenoiser(depth=0), "depth"),
    ],
)
def test_bad_arguments(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_time_class_embedding_is_the_sum_with_a_null_label_row() -> None:
    torch.manual_seed(0)
    block = TimeClassEmbedding(sinusoid_dim=6, dim=12, num_classes=3, owner="test")
    t, y = torch.tensor([0, 5, 40]), torch.tensor([2, 0, 1])
    time_part = block.time_mlp(timestep_embedding(t, 6))
    torch.testing.assert_close(block(t, y), time_part + block.class_embedding.weight[y])
    # No labels: the reserved row num_classes (= 3), so a conditional network also runs unconditionally.
    torch.testing.assert_close(block(t), time_part + block.class_embedding.weight[3].expand(3, -1))
    # The embedding follows the network's dtype (a float64 network gets a float64 embedding, not float32).
    assert block.double()(t, y).dtype == torch.float64


@pytest.mark.parametrize("network", [UNet(**SMALL), MLPDenoiser()])
def test_both_denoisers_condition_through_the_shared_embedding(network: nn.Module) -> None:
    assert isinstance(network.embedding, TimeClassEmbedding)
    assert not any("class_embedding" in name for name, _ in network.named_children())


def test_bad_inputs() -> None:
    model = UNet(**SMALL)
    with pytest.raises(ValueError, match="num_classes"):
        model(torch.randn(1, 1, 16, 16), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        timestep_embedding(torch.zeros(2, 1), 8)
