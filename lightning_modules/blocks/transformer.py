"""The transformer's parts, shared by the GPT (causal, with a key/value cache and optional rotary position
embeddings) and the vision transformers (non-causal): multi-head self-attention through
`F.scaled_dot_product_attention` and the pre-norm residual block."""

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


class KVCache:
    """The keys and values of the tokens seen so far, one (k, v) pair per layer, each (B, heads, T, head_dim):
    with them a new token attends to the past without recomputing it, so sampling costs O(T) per token."""

    def __init__(self, n_layer: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer

    @property
    def length(self) -> int:
        return 0 if self.layers[0] is None else self.layers[0][0].shape[2]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this layer's new keys and values; return all of them."""
        past = self.layers[layer]
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        self.layers[layer] = (k, v)
        return k, v


Rotary = tuple[torch.Tensor, torch.Tensor]  # cos and sin of the rotary angles, each (T, head_dim / 2)


def rotary_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> Rotary:
    """cos and sin of the angles m * theta_i, theta_i = base^(-2i/d), for the rotary position embedding
    (Su et al. 2021, eq. 15); each (T, head_dim / 2)."""
    theta = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[:, None] * theta
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_2i, x_2i+1) of the last dimension by its angle (Su et al. 2021, eq. 34), so that a
    query at position m and a key at position n meet through a rotation by (n - m) only: relative position."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention softmax(Q K^T / sqrt(d_k)) V (Vaswani et al. 2017, eq. 1) through PyTorch's
    fused `scaled_dot_product_attention`. Causal: position t sees positions <= t only. Dropout acts on the
    output projection (the residual branch) and, at `attention_dropout` (default the same), on the attention
    weights: torch's fused CPU kernels take no dropout, so a non-zero rate there runs the unfused path."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = False,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"the width {dim} must be divisible by the number of heads {heads}; change dim or heads")
        self.heads, self.causal = heads, causal
        self.dropout = dropout if attention_dropout is None else attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.proj_dropout = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v of shape (B, heads, T, D / heads)."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rotary: Rotary | None = None
    ) -> torch.Tensor:
        """`cache` (causal only) holds and receives the keys and values of earlier calls, `layer` says whose;
        `rotary` rotates queries and keys by their positions."""
        if cache is not None and not self.causal:
            raise ValueError("a key/value cache needs causal attention: a past token must not see later ones")
        q, k, v = self.split_heads(x)
        if rotary is not None:  # before the cache: cached keys keep the rotation of their own position
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        t, past = q.shape[2], k.shape[2] - q.shape[2]
        # Without a past the mask is the plain causal one; one new token may see everything; a chunk after a
        # past sees the past and its own prefix (lower-triangular mask shifted by the past's length).
        shifted = self.causal and past > 0 and t > 1
        mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(past) if shifted else None
        # On the CPU, torch's bf16 attention kernels are slower than its fp32 ones at every size of the zoo (the
        # backward 7x at ViT's 50 tokens of 16 per head, measured single-threaded): under bf16 autocast (which
        # casts attention's inputs to bf16 itself) attention runs in fp32 on the CPU, softmax statistics included,
        # and only the projections around it in bf16.
        cpu_bf16 = q.device.type == "cpu" and torch.is_autocast_enabled("cpu") and q.dtype == torch.bfloat16
        with torch.autocast("cpu", enabled=False) if cpu_bf16 else contextlib.nullcontext():
            y = F.scaled_dot_product_attention(
                q.float() if cpu_bf16 else q,
                k.float() if cpu_bf16 else k,
                v.float() if cpu_bf16 else v,
                attn_mask=mask,
                is_causal=self.causal and past == 0 and t > 1,
                dropout_p=self.dropout if self.training else 0.0,
            )
        y = y.to(q.dtype)
        return self.proj_dropout(self.proj(y.transpose(1, 2).flatten(2)))


class TransformerBlock(nn.Module):
    """x + attention(LN(x)), then x + MLP(LN(x)): the pre-norm residual block (GPT-2, Radford et al. 2019,
    sec. 2.3; ViT eq. 2-3). The MLP is the position-wise feed-forward net of Vaswani et al. (eq. 2) with GELU,
    `mlp_ratio` times wider inside; `mlp.2` is its projection back into the residual stream."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        bias: bool = True,
        causal: bool = False,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, bias=bias)
        self.attention = SelfAttention(dim, heads, dropout, bias, causal, attention_dropout)
        self.norm2 = nn.LayerNorm(dim, bias=bias)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, dim, bias=bias), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, rotary: Rotary | None = None
    ) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), cache, layer, rotary)
        return x + self.mlp(self.norm2(x))
