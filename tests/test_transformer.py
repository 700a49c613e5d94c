"""The shared transformer parts: attention against a naive softmax computation (non-causal and causal), the
cache's guard, and the block's size against an independent parameter count."""

import math

import pytest
import torch

from lightning_modules.blocks.transformer import KVCache, SelfAttention, TransformerBlock
from lightning_modules.blocks.vit import HybridViT, ViT


def naive_attention(attention: SelfAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V (Vaswani et al. 2017, eq. 1) per head, with Q, K, V cut from the qkv Linear
    by hand (head h owns columns h*d:(h+1)*d of each of the three projections), then the output projection."""
    b, t, dim = x.shape
    heads = attention.heads
    d = dim // heads
    qkv = x @ attention.qkv.weight.T + attention.qkv.bias
    out = torch.zeros(b, t, dim, dtype=x.dtype)
    for h in range(heads):
        q, k, v = (qkv[..., part * dim + h * d : part * dim + (h + 1) * d] for part in range(3))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)
        if causal:
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        out[..., h * d : (h + 1) * d] = torch.softmax(scores, dim=-1) @ v
    return out @ attention.proj.weight.T + attention.proj.bias


@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_naive_softmax_attention(causal):
    torch.manual_seed(0)
    attention = SelfAttention(dim=16, heads=4, causal=causal).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    # Both sides in float64: the fused kernel and the loop differ only in summation order (~1e-15 here).
    torch.testing.assert_close(attention(x), naive_attention(attention, x, causal), atol=1e-12, rtol=1e-12)


def test_non_causal_attention_sees_later_tokens_and_refuses_a_cache():
    torch.manual_seed(0)
    attention = SelfAttention(dim=8, heads=2)
    x = torch.randn(1, 4, 8)
    changed = x.clone()
    changed[0, 3] += 1.0
    assert not torch.allclose(attention(x)[0, 0], attention(changed)[0, 0])  # token 0 reads token 3
    with pytest.raises(ValueError, match="needs causal attention"):
        attention(x, KVCache(1))
    with pytest.raises(ValueError, match="divisible by the number of heads"):
        SelfAttention(dim=10, heads=4)


def test_block_parameter_count_and_bias_flag():
    d, hidden = 16, 64
    # LayerNorm gains and biases 2 x 2d, qkv 3d^2 + 3d, output projection d^2 + d, MLP d h + h + h d + d.
    with_bias = 4 * d + 3 * d * d + 3 * d + d * d + d + d * hidden + hidden + hidden * d + d
    assert sum(p.numel() for p in TransformerBlock(d, 4, mlp_ratio=4.0).parameters()) == with_bias
    without = sum(p.numel() for p in TransformerBlock(d, 4, mlp_ratio=4.0, bias=False).parameters())
    assert without == 2 * d + 4 * d * d + 2 * d * hidden


def test_vit_sizes_are_those_of_the_configs():
    # The parameter counts recorded in configs/hybrid_vit.yaml for the two reference networks.
    vit = ViT((1, 28, 28), 10, patch_size=4, dim=64, depth=6, heads=4, mlp_ratio=2.0)
    hybrid = HybridViT((1, 28, 28), 10, stem_channels=24, patch_size=4, dim=64, depth=5, heads=4, mlp_ratio=2.0)
    assert sum(p.numel() for p in vit.parameters()) == 205_962
    assert sum(p.numel() for p in hybrid.parameters()) == 201_538


@pytest.mark.parametrize(("attention_dropout", "expected"), [(None, 0.2), (0.0, 0.0), (0.1, 0.1)])
def test_attention_dropout_defaults_to_the_dropout_and_leaves_the_residual_one(
    monkeypatch, attention_dropout, expected
):
    """--model.attention_dropout reaches the attention kernel alone (0 lets torch take a fused one); the
    residual branches keep `dropout`, so two training passes still differ."""
    import torch.nn.functional as F

    rates = []
    kernel = F.scaled_dot_product_attention

    def spy(*args, dropout_p=0.0, **kwargs):
        rates.append(dropout_p)
        return kernel(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    block = TransformerBlock(16, 4, dropout=0.2, causal=True, attention_dropout=attention_dropout).train()
    x = torch.randn(2, 5, 16)
    assert not torch.equal(block(x), block(x))
    block.eval()(x)
    assert rates == [expected, expected, 0.0]  # none at evaluation
