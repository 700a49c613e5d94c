"""scripts/flop_rate.py: a training step's FLOPs against their closed form, the count leaving the model as it found
it, and the measured matmul peak. FLOP counts are integers computed from shapes, so they are compared exactly."""

import math
from collections import Counter

import flop_rate
import lightning as L
import pytest
import torch
import torch.nn.functional as F
from flop_rate import GemmShapes, matmul_peak_flops, precision_dtype, shape_peak_flops, training_step_flops
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_modules.language.gpt import GPT


class Regression(L.LightningModule):
    """`net` fitted to y by mean squared error: the FLOPs of a step are those of `net`'s matmuls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return {"loss": F.mse_loss(self.net(x), y)}


def attached(model: L.LightningModule) -> L.LightningModule:
    """The model with a CPU Trainer attached, as after a fit (the count reads the trainer's precision)."""
    model.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    return model


def test_two_bias_free_layers_count_their_matmuls_forward_and_backward():
    b, n_in, hidden, n_out = 8, 5, 7, 3
    model = attached(Regression(nn.Sequential(nn.Linear(n_in, hidden, bias=False), nn.Linear(hidden, n_out, False))))
    batch = torch.randn(b, n_in), torch.randn(b, n_out)
    # A (b, m) @ (m, n) matmul is 2*b*m*n FLOPs. Forward: one per layer. Backward: each layer's weight gradient
    # (the same size again), and the gradient of its input, except for the first layer, whose input is the data
    # (which needs none). The loss (differences, squares, a mean) has no matmul: it counts nothing.
    first, second = 2 * b * n_in * hidden, 2 * b * hidden * n_out
    assert training_step_flops(model, batch) == 2 * first + 3 * second


def test_attention_on_the_cpu_is_counted():
    # FlopCounterMode knows CUDA's attention kernels only; flop_rate adds the CPU one, with their formulas.
    # Forward: Q K^T and (softmax) V, two matmuls of 2*s*s*d FLOPs per batch and head; backward: five, the scores
    # recomputed (a fused kernel does not keep them) and the gradients of the scores, V, Q and K.
    b, h, s, d = 2, 3, 16, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    counter = FlopCounterMode(display=False)
    with counter:
        F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
    assert counter.get_total_flops() == (2 + 5) * 2 * b * h * s * s * d


def test_counting_leaves_the_model_and_the_random_generators_as_they_were():
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2))
    model = attached(Regression(net))
    batch = torch.randn(10, 4), torch.randn(10, 2)
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # parameters and BatchNorm's running statistics
    rng = torch.get_rng_state()
    training_step_flops(model, batch)
    assert all(p.grad is None for p in model.parameters())  # none before, none after
    model.train()
    model.training_step(batch, 0)["loss"].backward()  # gradients from a step of the run
    model.eval()
    grads = [p.grad.clone() for p in model.parameters()]
    assert training_step_flops(model, batch) > 0
    assert not model.training and not any(m.training for m in model.modules())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    # The training step above moved the running statistics: put them back to compare the counts' effect alone.
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items() if "running" not in k and "num_batches" not in k)
    model.load_state_dict(state)
    training_step_flops(model, batch)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.manual_seed(0)
    rng = torch.get_rng_state()
    training_step_flops(model, batch)  # dropout draws from the global generator while counting
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_model_with_manual_optimisation_has_no_step_flops():
    model = attached(Regression(nn.Linear(2, 1)))
    model.automatic_optimization = False
    assert training_step_flops(model, (torch.randn(3, 2), torch.randn(3, 1))) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_matmul_peak_is_a_positive_rate(dtype):
    rng = torch.get_rng_state()
    peak = matmul_peak_flops(dtype, size=64, seconds=0.05)
    assert peak > 0 and math.isfinite(peak)  # its speed is the machine's: not asserted
    assert torch.equal(torch.get_rng_state(), rng)  # the matrices come from a generator of its own


@pytest.mark.parametrize(
    "precision, dtype",
    [("32-true", torch.float32), ("bf16-mixed", torch.bfloat16), ("bf16-true", torch.bfloat16),
     ("16-mixed", torch.float16), ("64-true", torch.float64), ("transformer-engine", torch.float32)],
)  # fmt: skip
def test_the_peak_is_taken_in_the_dtype_of_the_precision(precision, dtype):
    assert precision_dtype(precision) is dtype


def test_a_gpt_step_counts_its_linear_layers_three_times_and_its_attention():
    vocab, block, layers, heads, width, b = 11, 8, 2, 2, 16, 3
    model = attached(GPT(vocab, block, layers, heads, width, dropout=0.0, position="rope"))
    tokens = torch.randint(0, vocab, (b, block + 1))
    # Per token, each weight matrix costs 2 FLOPs per entry forward and 4 backward (its gradient and its input's:
    # every layer's input descends from the embedding), the 6N of Kaplan et al. 2020 (sec. 2.1) over the
    # matrices: per block qkv (w x 3w), the projection (w x w), the MLP (w x 4w, 4w x w); then the tied head.
    matrices = layers * (3 * width**2 + width**2 + 2 * 4 * width**2) + width * vocab
    # Attention: Q K^T and softmax V forward (2 matmuls of 2*T*T*w FLOPs per sequence and layer over the heads),
    # five backward (the scores recomputed, then the gradients of scores, V, Q, K).
    attention = layers * (2 + 5) * 2 * b * block * block * width
    assert training_step_flops(model, (tokens[:, :-1], tokens[:, 1:])) == 6 * b * block * matrices + attention


def test_a_sparse_by_dense_product_counts_only_its_stored_values():
    """The CSR adjacency's product with node features (a GCN's aggregation): 2 nnz n FLOPs forward, as many for the
    features' gradient (the transposed sparse matrix by the incoming gradient), none for the constant adjacency."""
    nodes, features, edges = 50, 6, torch.tensor([[0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 0]])
    adjacency = torch.sparse_coo_tensor(edges, torch.ones(7), (nodes, nodes)).to_sparse_csr()
    x = torch.randn(nodes, features, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        (adjacency @ x).sum().backward()
    assert counter.get_total_flops() == 2 * (2 * 7 * features)
    with FlopCounterMode(display=False) as counter:  # dense products keep torch's formula
        (torch.randn(nodes, nodes) @ x).sum().backward()
    assert counter.get_total_flops() == 2 * (2 * nodes * nodes * features)


def test_the_forward_products_are_recorded_as_gemms_of_their_own_shapes():
    # Each record is (batch, m, k, n) of an (m, k) by (k, n) product; its FLOPs 2 batch m k n, as FlopCounterMode.
    x, image = torch.randn(6, 5), torch.randn(2, 4, 9, 9)
    q, k, v = torch.randn(3, 2, 7, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 4)
    layers = {
        "linear": (nn.Linear(5, 3), x, (1, 6, 5, 3)),
        # im2col: one row per output position (2 images x 9 x 9), one column per input of a 3 x 3 window.
        "conv": (nn.Conv2d(4, 16, 3, padding=1), image, (1, 2 * 81, 4 * 9, 16)),
        "strided conv": (nn.Conv2d(4, 16, 3, stride=2), image, (1, 2 * 16, 4 * 9, 16)),
        "grouped conv": (nn.Conv2d(4, 8, 3, padding=1, groups=2), image, (2, 2 * 81, 2 * 9, 4)),
        # col2im: one row per input position, each spread over C_out x kernel area outputs.
        "transposed conv": (nn.ConvTranspose2d(4, 6, 2, stride=2), image, (1, 2 * 81, 4, 6 * 4)),
    }
    for name, (layer, inputs, gemm) in layers.items():
        shapes, counter = GemmShapes(), FlopCounterMode(display=False)
        with torch.no_grad(), counter, shapes:
            layer(inputs)
        assert dict(shapes.flops) == {gemm: counter.get_total_flops()}, name
    adjacency = torch.eye(4).to_sparse_csr()
    shapes = GemmShapes()
    with shapes:
        torch.sparse.mm(adjacency, torch.randn(4, 3))
    assert not shapes.flops  # a sparse product is no GEMM: its peak is not a dense matmul's
    shapes = GemmShapes()
    with torch.no_grad(), shapes:
        F.scaled_dot_product_attention(q, k, v)
    # Per batch and head (3 x 2): Q K^T, (7, 8) by (8, 5), then softmax V, (7, 5) by (5, 4).
    assert dict(shapes.flops) == {(6, 7, 8, 5): 2 * 6 * 7 * 8 * 5, (6, 7, 5, 4): 2 * 6 * 7 * 5 * 4}


def test_a_training_step_records_only_its_forward_products():
    b, n_in, hidden, n_out = 8, 5, 7, 3
    model = attached(Regression(nn.Sequential(nn.Linear(n_in, hidden, bias=False), nn.Linear(hidden, n_out, False))))
    shapes = GemmShapes()
    training_step_flops(model, (torch.randn(b, n_in), torch.randn(b, n_out)), shapes)
    assert dict(shapes.flops) == {
        (1, b, n_in, hidden): 2 * b * n_in * hidden,
        (1, b, hidden, n_out): 2 * b * hidden * n_out,
    }


def test_the_shape_peak_is_the_rate_of_the_mix(monkeypatch):
    # Shape A runs at 4 GFLOP/s and holds 3/4 of the FLOPs, B at 1 GFLOP/s: 1 FLOP of the mix takes
    # 3/4 / 4 + 1/4 / 1 ns, so the mix runs at 1 / (3/16 + 4/16) = 16/7 GFLOP/s (exact up to float rounding).
    a, b = (1, 64, 32, 16), (1, 32, 8, 4)
    rates = {16: 4e9, 4: 1e9}  # keyed by n, the last dimension of the product timed

    def fake_timed_matmuls(matmul, sync, seconds):
        out = matmul()
        flops = 2 * out.shape[0] * out.shape[1] * out.shape[2] * {16: 32, 4: 8}[out.shape[2]]
        return 10, 10 * flops / rates[out.shape[2]]

    monkeypatch.setattr(flop_rate, "timed_matmuls", fake_timed_matmuls)
    peak = shape_peak_flops(Counter({a: 300, b: 100}), torch.float32, coverage=1.0)
    assert peak == pytest.approx(16 / 7 * 1e9, rel=1e-12)
    # Coverage 0.75 stops after the largest shape, A alone.
    assert shape_peak_flops(Counter({a: 300, b: 100}), torch.float32, coverage=0.75) == pytest.approx(4e9, rel=1e-12)


def test_the_shape_peak_of_real_products_is_a_positive_rate():
    peak = shape_peak_flops(Counter({(2, 40, 16, 8): 1}), torch.bfloat16, seconds=0.02)
    assert peak > 0 and math.isfinite(peak)  # its speed is the machine's: not asserted
    with pytest.raises(ValueError, match="at least one"):
        shape_peak_flops(Counter(), torch.float32)
