"""The three kinds of graph layer (Velickovic 2023, "Everything is connected", sec. 3): convolutional (a fixed
weight per edge), attentional (a weight per edge computed from its two ends) and full message passing (a vector
message per edge computed from its ends and its own features), each wrapped with a residual connection and
normalisation."""

import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.nn import GATv2Conv, GCNConv, MessagePassing

LayerType = Literal["gcn", "gat", "mpnn"]


def sparse_adjacency(edge_index: torch.Tensor, weight: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The weighted adjacency as a sparse CSR matrix whose rows receive (A[i, j] = weight of the edge j -> i). With
    it GCNConv aggregates by a sparse matrix product instead of a message per edge, 4-5 times faster on a CPU (a
    4-layer GCN on 128 MNIST superpixel graphs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*[Ss]parse CSR tensor support is in beta.*", UserWarning)
        # The indices come from a Batch, in range by construction: torch's invariant checks would only cost time.
        adjacency = torch.sparse_coo_tensor(edge_index.flip(0), weight, (num_nodes, num_nodes), check_invariants=False)
        return adjacency.to_sparse_csr()


class GatedGCNConv(MessagePassing):
    """Residual gated graph convolution (Bresson & Laurent 2017, eq. 11; with edge features as in Dwivedi et al.
    2020, eq. 20-22). The edge network is one linear map of [receiver h_i, sender h_j, edge e_ij], i.e.
    e'_ij = A h_i + B h_j + C e_ij; its sigmoid gates the messages V h_j:

        h'_i = U h_i + sum_j sigmoid(e'_ij) * V h_j / (sum_j sigmoid(e'_ij) + eps)

    Returns the new node and edge features (before normalisation and the residual)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(aggr="add")
        self.edge_network = nn.Linear(3 * channels, channels)
        self.update_self = nn.Linear(channels, channels)  # U
        self.update_neighbour = nn.Linear(channels, channels)  # V
        self.eps = eps

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source, target = edge_index
        # The linear map of the concatenation, with A h and B h computed per node and then gathered per edge: a third
        # of the edge-wise products.
        receiver, sender, edge = self.edge_network.weight.split(h.shape[-1], dim=1)
        e_new = (h @ receiver.T)[target] + (h @ sender.T)[source] + F.linear(e, edge, self.edge_network.bias)
        gate = torch.sigmoid(e_new)
        # Numerator and denominator of the gated mean in one pass of messages.
        summed = self.propagate(edge_index, v=self.update_neighbour(h), gate=gate)
        numerator, denominator = summed.chunk(2, dim=-1)
        return self.update_self(h) + numerator / (denominator + self.eps), e_new

    def message(self, v_j: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return torch.cat([gate * v_j, gate], dim=-1)


class GraphLayer(nn.Module):
    """One layer of the classifier: h <- h + dropout(ReLU(BatchNorm(conv(h)))) (Dwivedi et al. 2020, the residual
    layers of their benchmark); the message-passing layer updates its edge features the same way."""

    def __init__(self, kind: LayerType, channels: int, heads: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        if kind == "gcn":
            self.conv = GCNConv(channels, channels)  # normalised by degree: D^-1/2 (A + I) D^-1/2 X W
        elif kind == "gat":
            if channels % heads:
                raise ValueError(f"--model.hidden ({channels}) must be a multiple of --model.heads ({heads})")
            self.conv = GATv2Conv(channels, channels // heads, heads=heads)
        else:
            self.conv = GatedGCNConv(channels)
            self.edge_norm = nn.BatchNorm1d(channels)
        self.norm = nn.BatchNorm1d(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`e`: the edge weights (E, 1) for "gcn" (unused by "gat"), the edge features (E, channels) for "mpnn". For
        "gcn" `edge_index` may instead be the weighted `sparse_adjacency` (and `e` is then not read)."""
        if self.kind == "gcn":
            update = self.gcn_update(h, edge_index, e)
        elif self.kind == "gat":
            update = self.conv(h, edge_index)
        else:
            update, e_new = self.conv(h, edge_index, e)
            e = e + self.dropout(torch.relu(self.edge_norm(e_new)))
        return h + self.dropout(torch.relu(self.norm(update))), e

    # Eager under --model.compile: torch.compile cannot trace sparse CSR tensors (dynamo fails on their strides), so
    # the graph breaks around the sparse product and the rest of the layer compiles.
    @torch.compiler.disable
    def gcn_update(self, h: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # In fp32 under any autocast: torch's sparse CSR product has no bf16 kernel on the CPU.
        with warnings.catch_warnings(), torch.autocast(h.device.type, enabled=False):
            # PyG's normalisation builds its own sparse matrix, with the same warning as sparse_adjacency's.
            warnings.filterwarnings("ignore", ".*Sparse invariant checks are implicitly disabled.*", UserWarning)
            full = h.to(torch.promote_types(h.dtype, torch.float32))
            return self.conv(full, edge_index, None if edge_index.is_sparse_csr else e.squeeze(-1))
