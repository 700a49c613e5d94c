"""The graph classifier: each layer type against its formula written with dense adjacency matrices, the graph-level
output's invariance to the order of the nodes, the benchmark's parameter budget, and every model through
scripts/fit.py on the tiny MNIST."""

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch

from lightning_modules.graphs.graph_classifier import GraphClassifier, graph_classification_loss
from lightning_modules.graphs.layers import GraphLayer, sparse_adjacency
from lightning_modules.registry import model_class, read_config

MODELS = ("gcn", "gat", "mpnn")
# A 5-node directed graph (source, target): every node receives at least one edge, node 4 receives three.
EDGES = torch.tensor([[1, 2, 0, 3, 4, 0, 1, 2], [0, 0, 1, 2, 3, 4, 4, 4]])


def five_node_graph(channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (5, channels), the edges and positive weights (E, 1), float64."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(5, channels, generator=generator, dtype=torch.float64)
    weights = torch.rand(EDGES.shape[1], 1, generator=generator, dtype=torch.float64) + 0.1
    return x, EDGES, weights


def adjacency(edge_index: torch.Tensor, values: torch.Tensor, n: int = 5) -> torch.Tensor:
    """A[i, j] = value of the edge j -> i (rows receive)."""
    dense = torch.zeros(n, n, *values.shape[1:], dtype=values.dtype)
    dense[edge_index[1], edge_index[0]] = values
    return dense


def layer(kind: str, channels: int = 8) -> GraphLayer:
    torch.manual_seed(0)
    return GraphLayer(kind, channels, heads=2).double().eval()


# float64 throughout: the sparse and the dense sums differ only in their order, a few ulps of 1e-16.
TOLERANCE = {"rtol": 1e-10, "atol": 1e-12}


def test_gcn_layer_is_the_normalised_adjacency() -> None:
    """Kipf & Welling 2017, eq. 2: D^-1/2 (A + I) D^-1/2 X W + b, with D the weighted in-degrees of A + I."""
    x, edges, weights = five_node_graph(8)
    conv = layer("gcn").conv
    a_hat = adjacency(edges, weights[:, 0]) + torch.eye(5, dtype=torch.float64)
    d = a_hat.sum(1).rsqrt()
    expected = d[:, None] * a_hat * d[None, :] @ (x @ conv.lin.weight.T) + conv.bias
    torch.testing.assert_close(conv(x, edges, weights[:, 0]), expected, **TOLERANCE)
    # The model's path: the same layer through the sparse adjacency matrix.
    torch.testing.assert_close(conv(x, sparse_adjacency(edges, weights[:, 0], 5)), expected, **TOLERANCE)


def test_gat_layer_is_a_softmax_over_each_neighbourhood() -> None:
    """Brody et al. 2022, eq. 7: e_ij = a^T LeakyReLU(W_s x_j + W_t x_i) over j in N(i) and i itself, softmax over j,
    out_i = sum_j alpha_ij W_s x_j, per head, heads concatenated, plus a bias."""
    x, edges, _ = five_node_graph(8)
    conv = layer("gat").conv
    heads, width = conv.heads, conv.out_channels
    source = (x @ conv.lin_l.weight.T + conv.lin_l.bias).view(5, heads, width)
    target = (x @ conv.lin_r.weight.T + conv.lin_r.bias).view(5, heads, width)
    scores = (F.leaky_relu(target[:, None] + source[None, :], 0.2) * conv.att[0]).sum(-1)  # (i, j, head)
    linked = adjacency(edges, torch.ones(edges.shape[1], dtype=torch.float64)) + torch.eye(5, dtype=torch.float64)
    alpha = torch.softmax(scores.masked_fill(linked[..., None] == 0, -torch.inf), dim=1)
    expected = torch.einsum("ijh,jhc->ihc", alpha, source).reshape(5, heads * width) + conv.bias
    torch.testing.assert_close(conv(x, edges), expected, **TOLERANCE)


def test_mpnn_layer_is_the_gated_graph_convolution() -> None:
    """Bresson & Laurent 2017, eq. 11 with edge features (Dwivedi et al. 2020, eq. 20-22): e'_ij = A h_i + B h_j +
    C e_ij, h'_i = U h_i + sum_j sigmoid(e'_ij) V h_j / (sum_j sigmoid(e'_ij) + eps), over dense (i, j) tensors."""
    x, edges, _ = five_node_graph(8)
    e = torch.randn(edges.shape[1], 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    conv = layer("mpnn").conv
    a, b, c = conv.edge_network.weight.split(8, dim=1)
    e_dense = adjacency(edges, e)  # (i, j, channels)
    e_new = (x @ a.T)[:, None] + (x @ b.T)[None, :] + e_dense @ c.T + conv.edge_network.bias
    mask = adjacency(edges, torch.ones(edges.shape[1], dtype=torch.float64))[..., None]
    gate = torch.sigmoid(e_new) * mask
    v = x @ conv.update_neighbour.weight.T + conv.update_neighbour.bias
    u = x @ conv.update_self.weight.T + conv.update_self.bias
    expected = u + (gate * v[None, :]).sum(1) / (gate.sum(1) + conv.eps)
    h, e_out = conv(x, edges, e)
    torch.testing.assert_close(h, expected, **TOLERANCE)
    torch.testing.assert_close(e_out, e_new[edges[1], edges[0]], **TOLERANCE)


def test_a_layer_adds_its_normalised_update_to_its_input() -> None:
    """h + ReLU(BatchNorm(conv(h))) (Dwivedi et al. 2020, eq. 3-4 with the residual); in eval mode the batch norm
    is the affine map of its running statistics."""
    x, edges, weights = five_node_graph(8)
    residual = layer("gcn")
    norm = residual.norm
    update = residual.conv(x, edges, weights[:, 0])
    normalised = (update - norm.running_mean) / (norm.running_var + norm.eps).sqrt() * norm.weight + norm.bias
    torch.testing.assert_close(residual(x, edges, weights)[0], x + torch.relu(normalised), **TOLERANCE)


def random_batch(generator: torch.Generator, sizes=(6, 9), k: int = 3) -> tuple[Batch, torch.Tensor]:
    """Graphs of `sizes` nodes, each node receiving k edges from random other nodes of its graph."""
    xs, edges, start = [], [], 0
    for n in sizes:
        xs.append(torch.rand(n, 3, generator=generator))
        for target in range(n):
            others = torch.tensor([j for j in range(n) if j != target])
            chosen = others[torch.randperm(n - 1, generator=generator)[:k]]
            edges += [(start + int(s), start + target) for s in chosen]
        start += n
    sizes = torch.tensor(sizes)
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    edge_index = torch.tensor(edges).T
    graphs = Batch(
        x=torch.cat(xs),
        edge_index=edge_index,
        edge_attr=torch.rand(edge_index.shape[1], 1, generator=generator),
        batch=torch.repeat_interleave(torch.arange(len(sizes)), sizes),
        ptr=ptr,
    )
    return graphs, torch.randint(0, 10, (len(sizes),), generator=generator)


@pytest.mark.parametrize("kind", MODELS)
def test_graph_output_is_invariant_to_the_order_of_the_nodes(kind: str) -> None:
    torch.manual_seed(0)
    model = GraphClassifier(kind, hidden=16, heads=2).eval()
    graphs, _ = random_batch(torch.Generator().manual_seed(0))
    # A permutation within each graph (nodes stay in their graph, as a Batch keeps them contiguous).
    order = torch.cat(
        [torch.randperm(int(n)) + int(s) for s, n in zip(graphs.ptr[:-1], graphs.ptr.diff(), strict=True)]
    )
    new_place = torch.empty_like(order)
    new_place[order] = torch.arange(len(order))
    shuffled = Batch(
        x=graphs.x[order],
        edge_index=new_place[graphs.edge_index],
        edge_attr=graphs.edge_attr,
        batch=graphs.batch[order],
        ptr=graphs.ptr,
    )
    with torch.no_grad():
        logits, shuffled_logits = model(graphs), model(shuffled)
    # float32 sums over nodes and edges in another order: a few ulps of values of order 1 through 4 layers.
    torch.testing.assert_close(shuffled_logits, logits, rtol=1e-5, atol=1e-5)
    # And the nodes do matter: other features give other logits.
    other = Batch(**{**graphs.to_dict(), "x": graphs.x.flip(0)})
    with torch.no_grad():
        assert not torch.allclose(model(other), logits, atol=1e-3)


def test_the_loss_is_the_mean_negative_log_likelihood() -> None:
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([3, 0, 9, 3])
    expected = -torch.stack([logits[i].exp()[labels[i]].log() - logits[i].exp().sum().log() for i in range(4)]).mean()
    torch.testing.assert_close(graph_classification_loss(logits, labels), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_each_config_has_depth_4_and_about_100k_parameters(name: str) -> None:
    """The benchmark's budget (Dwivedi et al. 2020, sec. 4.2): about 100k parameters at depth 4."""
    init_args = read_config(name)["model"]["init_args"]
    model = model_class(name)(**init_args, num_node_features=3, num_classes=10)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{name}: {parameters} parameters")
    assert len(model.layers) == 4
    assert 95_000 <= parameters <= 105_000


def test_gat_width_must_split_into_the_heads() -> None:
    with pytest.raises(ValueError, match=r"^--model.hidden \(100\) must be a multiple of --model.heads \(8\)"):
        GraphClassifier("gat", hidden=100, heads=8)


@pytest.mark.parametrize("name", MODELS)
def test_fast_dev_run_through_fit(name: str, data_root, fit_in_process) -> None:
    result = fit_in_process("--model", name, "--data.root", str(data_root), "--trainer.fast_dev_run", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc" in result.stdout
