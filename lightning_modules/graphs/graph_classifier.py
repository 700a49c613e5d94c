"""Graph classification: node and edge embeddings, `depth` residual graph layers of one kind (convolutional,
attentional or message passing), mean pooling over each graph's nodes and an MLP head, trained with cross-entropy
(the benchmarking-gnns classifiers of Dwivedi et al. 2020, sec. 3)."""

import math
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import global_mean_pool
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.graphs.layers import GraphLayer, LayerType, sparse_adjacency
from lightning_modules.optim import WarmupDecay, decay_groups, warmup_decay


def graph_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[label], averaged over the graphs of the batch."""
    return F.cross_entropy(logits, labels)


class GraphClassifier(L.LightningModule):
    """A graph network with one kind of layer ("gcn": GCNConv, Kipf & Welling 2017; "gat": GATv2Conv, Brody et al.
    2022; "mpnn": gated message passing with edge features, Bresson & Laurent 2017), AdamW with a schedule."""

    benchmark_metric = "test/acc"
    throughput_unit = "graphs"

    def __init__(
        self,
        layer: LayerType = "gcn",
        num_node_features: int | None = 3,
        num_classes: int | None = 10,
        hidden: int = 146,
        depth: int = 4,
        heads: int = 8,
        dropout: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        schedule: Literal["constant", "cosine"] = "cosine",
        warmup_epochs: float = 0.0,
        compile: bool = False,
    ) -> None:
        """
        Args:
            layer: "gcn" (a fixed weight per edge), "gat" (learned attention per edge) or "mpnn" (an edge network
                and gated messages).
            num_node_features: features per node; set from the DataModule by scripts/fit.py.
            num_classes: number of classes; set from the DataModule by scripts/fit.py.
            hidden: width of the node (and edge) features in the graph layers.
            depth: number of graph layers.
            heads: attention heads of "gat" (hidden is split between them).
            dropout: dropout after each layer.
            lr: base learning rate of AdamW.
            weight_decay: decoupled weight decay of the weight matrices.
            schedule: "constant" or "cosine" over the run, per step.
            warmup_epochs: linear warm-up, in epochs.
            compile: run each graph layer and the readout through torch.compile, in place: the state_dict keys stay
                the plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if num_node_features is None or num_classes is None:
            raise ValueError("a graph classifier needs labelled graphs: pick graph data, e.g. --data image_graphs")
        self.save_hyperparameters()
        self.node_embedding = nn.Linear(num_node_features, hidden)
        # The message-passing layers carry edge features; the edge weight is embedded to their width.
        self.edge_embedding = nn.Linear(1, hidden) if layer == "mpnn" else None
        self.layers = nn.ModuleList(GraphLayer(layer, hidden, heads, dropout) for _ in range(depth))
        self.head = nn.Sequential(  # the benchmark's MLP readout: hidden -> hidden/2 -> hidden/4 -> classes
            nn.Linear(hidden, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden // 4), nn.ReLU(),
            nn.Linear(hidden // 4, num_classes),
        )  # fmt: skip
        if compile:
            # dynamic: every batch holds another number of nodes and edges; one graph serves them all.
            for network in (*self.layers, self.head):
                network.compile(dynamic=True)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, graphs: Batch) -> torch.Tensor:
        """Logits (num_graphs, num_classes) of a batch of graphs."""
        h = self.node_embedding(graphs.x)
        e = graphs.edge_attr if self.edge_embedding is None else self.edge_embedding(graphs.edge_attr)
        structure = graphs.edge_index
        if self.hparams.layer == "gcn":  # one sparse matrix for every layer
            structure = sparse_adjacency(graphs.edge_index, graphs.edge_attr.squeeze(-1), len(h))
        for layer in self.layers:
            h, e = layer(h, structure, e)
        # `size`: the number of graphs from ptr, so that pooling needs no batch.max() (a device sync).
        return self.head(global_mean_pool(h, graphs.batch, size=graphs.num_graphs))

    def count_throughput(self, batch) -> int:
        return len(batch[1])

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        graphs, labels = batch
        loss = graph_classification_loss(self(graphs), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def score_split(self, batch, stage: str, accuracy: MulticlassAccuracy) -> None:
        graphs, labels = batch
        logits = self(graphs)
        self.log(f"{stage}/loss", graph_classification_loss(logits, labels), sync_dist=True, batch_size=len(labels))
        accuracy(logits, labels)
        self.log(f"{stage}/acc", accuracy, prog_bar=stage == "val", batch_size=len(labels))

    def validation_step(self, batch, batch_idx: int) -> None:
        self.score_split(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self.score_split(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per graph: the class probabilities, the predicted class and the true label."""
        graphs, labels = batch
        probabilities = F.softmax(self(graphs).float(), dim=-1)
        return {"probabilities": probabilities, "predicted": probabilities.argmax(-1), "label": labels}

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.AdamW(decay_groups(self.parameters(), hp.weight_decay), lr=hp.lr)
        total = self.trainer.estimated_stepping_batches
        steps_per_epoch = total / max(self.trainer.max_epochs, 1) if math.isfinite(total) else 0
        factor = WarmupDecay(hp.schedule, round(hp.warmup_epochs * steps_per_epoch), decay_end=float(total))
        return warmup_decay(optimizer, factor)
