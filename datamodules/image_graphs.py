"""Images as graphs, built as the benchmarking-gnns superpixel sets are (Knyazev et al. 2019; Dwivedi et al.
2020, sec. 4.2): SLIC superpixels as nodes, their mean intensity (mean colour) and centroid as node features, an
edge to each node from its k nearest centroids, weighted by a Gaussian kernel of the distance. A flag builds a
plain grid of patches instead. Built once from an image DataModule's splits, in parallel, and cached under the
data root; every batch is (a torch_geometric Batch with x, edge_index, edge_attr, batch and ptr, int64 labels)."""

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_warn
from rich.progress import track
from torch.utils.data import Dataset

from datamodules.batches import InMemoryDataModule, Split
from datamodules.images import CIFAR10DataModule, FashionMNISTDataModule, ImageDataModule, MNISTDataModule
from datamodules.sources import DataError, check_loader_options, resolve_root

IMAGES: dict[str, type[ImageDataModule]] = {
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
}
CACHE_FORMAT = 1  # bumped when the stored layout or the construction changes, so old caches are rebuilt
IMAGES_PER_CHUNK = 500  # per task of the build's process pool: large enough that pickling costs little


# --- one image to one graph (numpy, run in the build's worker processes) ------------------------------------------
def segment(image: np.ndarray, options: dict) -> np.ndarray:
    """(H, W) segment labels 0..n-1 of a (C, H, W) uint8 image: SLIC superpixels, or a grid of patches."""
    channels, height, width = image.shape
    if options["nodes"] == "grid":
        side = options["grid_size"]
        rows = np.arange(height) * side // height
        cols = np.arange(width) * side // width
        return rows[:, None] * side + cols[None, :]
    from skimage.segmentation import slic

    pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)
    pixels = pixels.astype(np.float32) / 255.0
    # SLIC may return a few more segments than asked for; ask for fewer until it does not (Knyazev et al.'s loop).
    for query in range(options["n_segments"], 0, -1):
        labels = slic(
            pixels,
            n_segments=query,
            compactness=options["compactness"],
            channel_axis=None if channels == 1 else -1,
            start_label=0,
        )
        if labels.max() < options["n_segments"]:
            break
    return np.unique(labels, return_inverse=True)[1].reshape(height, width)


def image_graph(image: np.ndarray, options: dict) -> tuple[np.ndarray, np.ndarray]:
    """One image's graph: node features (n, C + 2), the mean of each channel in [0, 1] then the centroid (row,
    column) as a fraction of the image's side, and edges (2, E) of local node indices, (source, target): each node
    receives an edge from each of its k nearest centroids (from all others when the graph has at most k + 1 nodes)."""
    channels, height, width = image.shape
    labels = segment(image, options).ravel()
    n = int(labels.max()) + 1
    area = np.bincount(labels, minlength=n)
    colour = [np.bincount(labels, image[c].ravel() / 255.0, minlength=n) / area for c in range(channels)]
    rows, cols = np.divmod(np.arange(height * width), width)
    centroid = np.stack(
        [np.bincount(labels, rows, minlength=n) / area / height, np.bincount(labels, cols, minlength=n) / area / width],
        axis=1,
    )
    features = np.concatenate([np.stack(colour, axis=1), centroid], axis=1).astype(np.float32)
    distance = np.linalg.norm(centroid[:, None] - centroid[None], axis=-1)
    np.fill_diagonal(distance, np.inf)
    k = min(options["k"], n - 1)
    sources = np.argpartition(distance, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((n, 0), dtype=np.int64)
    targets = np.repeat(np.arange(n), k).reshape(n, k)
    return features, np.stack([sources.ravel(), targets.ravel()])


def build_chunk(images: np.ndarray, options: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The graphs of (N, C, H, W) images, concatenated: features, nodes per graph, local edges, edges per graph."""
    graphs = [image_graph(image, options) for image in images]
    return (
        np.concatenate([x for x, _ in graphs]),
        np.array([len(x) for x, _ in graphs], dtype=np.int32),
        np.concatenate([e for _, e in graphs], axis=1),
        np.array([e.shape[1] for _, e in graphs], dtype=np.int32),
    )


def build_graphs(images: torch.Tensor, options: dict, workers: int, description: str) -> dict[str, torch.Tensor]:
    """The graphs of uint8 (N, C, H, W) images, compactly: x (all nodes, F), nodes (N,), edges (2, all edges) of
    local indices in the smallest integer type that holds them, and edge_counts (N,)."""
    array = images.numpy()
    chunks = [array[i : i + IMAGES_PER_CHUNK] for i in range(0, len(array), IMAGES_PER_CHUNK)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(track(pool.map(build_chunk, chunks, [options] * len(chunks)), description, len(chunks)))
    else:
        parts = list(track((build_chunk(chunk, options) for chunk in chunks), description, len(chunks)))
    x, nodes, edges, edge_counts = (
        np.concatenate(column, axis=-1 if i == 2 else 0) for i, column in enumerate(zip(*parts, strict=True))
    )
    local = np.uint8 if nodes.max() <= np.iinfo(np.uint8).max + 1 else np.int16
    return {
        "x": torch.from_numpy(x),
        "nodes": torch.from_numpy(nodes),
        "edges": torch.from_numpy(edges.astype(local)),
        "edge_counts": torch.from_numpy(edge_counts),
    }


# --- the in-memory dataset ----------------------------------------------------------------------------------------
def ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The concatenation of arange(start, start + count) for each pair, without a Python loop."""
    ends = counts.cumsum(0)
    return torch.repeat_interleave(starts - (ends - counts), counts) + torch.arange(int(ends[-1]) if len(ends) else 0)


def gaussian_edge_weights(centroids: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
    """w_ij = (exp(-(d_ij / s_i)^2) + exp(-(d_ij / s_j)^2)) / 2 for the edge j -> i at centroid distance d_ij, where
    s_i is the mean distance of node i to its k nearest neighbours (its incoming edges): the symmetrised kernel of
    benchmarking-gnns' superpixel graphs (Dwivedi et al. 2020, app. C)."""
    source, target = edge_index
    distance = (centroids[source] - centroids[target]).norm(dim=1)
    incoming = distance.new_zeros(len(centroids)).index_add_(0, target, torch.ones_like(distance))
    scale = distance.new_zeros(len(centroids)).index_add_(0, target, distance) / incoming.clamp(min=1) + 1e-8
    return 0.5 * (torch.exp(-((distance / scale[target]) ** 2)) + torch.exp(-((distance / scale[source]) ** 2)))


class GraphBatches(Dataset):
    """Graphs stored as concatenated tensors with per-graph counts. `__getitems__` gathers a whole batch with a few
    index operations (as TensorBatches does for images) and returns (Batch, labels)."""

    def __init__(self, graphs: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.x, self.nodes, self.edge_counts, self.labels = (
            graphs["x"],
            graphs["nodes"].long(),
            graphs["edge_counts"].long(),
            labels,
        )
        self.node_starts = self.nodes.cumsum(0) - self.nodes
        self.edge_starts = self.edge_counts.cumsum(0) - self.edge_counts
        self.edges = graphs["edges"]
        # Weights from the centroids (the last two features), over edges in dataset-wide node indices.
        graph_of_edge = torch.repeat_interleave(torch.arange(len(self.nodes)), self.edge_counts)
        global_edges = self.edges.long() + self.node_starts[graph_of_edge]
        self.edge_weight = gaussian_edge_weights(self.x[:, -2:].double(), global_edges).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]):
        from torch_geometric.data import Batch

        index = torch.as_tensor(indices, dtype=torch.long)
        nodes, edge_counts = self.nodes[index], self.edge_counts[index]
        node_index = ranges(self.node_starts[index], nodes)
        edge_index = ranges(self.edge_starts[index], edge_counts)
        ptr = torch.cat([torch.zeros(1, dtype=torch.long), nodes.cumsum(0)])
        shift = torch.repeat_interleave(ptr[:-1], edge_counts)
        graphs = Batch(
            x=self.x[node_index],
            edge_index=self.edges[:, edge_index].long() + shift,
            edge_attr=self.edge_weight[edge_index, None],
            batch=torch.repeat_interleave(torch.arange(len(index)), nodes),
            ptr=ptr,
        )
        return graphs, self.labels[index]


# --- the DataModule -----------------------------------------------------------------------------------------------
class ImageGraphDataModule(InMemoryDataModule):
    """The images of an image DataModule (same files, same train/validation/test split) as superpixel graphs."""

    def __init__(
        self,
        root: str | None = None,
        dataset: Literal["mnist", "fashion_mnist", "cifar10"] = "mnist",
        nodes: Literal["superpixels", "grid"] = "superpixels",
        n_segments: int = 75,
        compactness: float = 0.25,
        grid_size: int = 7,
        k: int = 8,
        batch_size: int = 128,
        num_workers: int = 0,
        build_workers: int | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        download: bool = True,
        fallback: bool = True,
        shuffle_seed: int = 0,
    ) -> None:
        """
        Args:
            root: data folder (the image files in torchvision's layout; the graph cache goes into
                `<root>/image_graphs`); default $LIGHTNING_ZOO_DATA, else ./data.
            dataset: the images: mnist, fashion_mnist or cifar10.
            nodes: "superpixels" (SLIC, Achanta et al. 2012) or "grid" (square patches).
            n_segments: at most this many superpixels per image (75 in the benchmark for MNIST).
            compactness: SLIC's balance of colour against space (0.25 in the benchmark).
            grid_size: patches per side for nodes="grid".
            k: edges into each node, from its k nearest centroids.
            batch_size: graphs per batch (per device).
            num_workers: DataLoader worker processes; 0 is right for in-memory tensors.
            build_workers: processes that build the graphs the first time; default every core.
            val_fraction, split_seed, download, fallback: as for the image DataModule (the same split).
            shuffle_seed: the seed of the training order (fit.py's --seed sets it).
        """
        super().__init__()
        check_loader_options("graph", num_workers, batch_size=batch_size)
        for flag, value in (("n_segments", n_segments), ("grid_size", grid_size), ("k", k)):
            if value < 1:
                raise DataError(f"--data.{flag} must be at least 1, got {value}")
        if compactness <= 0:
            raise DataError(f"--data.compactness must be positive (0.25 in the benchmark), got {compactness}")
        if build_workers is not None and build_workers < 1:
            raise DataError(
                f"--data.build_workers must be at least 1 process (or unset: every core), got {build_workers}"
            )
        self.save_hyperparameters()
        self.root = resolve_root(root)
        self.batch_size, self.num_workers, self.shuffle_seed = batch_size, num_workers, shuffle_seed
        self.data_source: str | None = None

    @functools.cached_property
    def images(self) -> ImageDataModule:
        """The image DataModule whose splits become graphs. Made on first use, not in __init__: Lightning's
        save_hyperparameters would take this module's arguments for its own there."""
        h = self.hparams
        return IMAGES[h.dataset](
            str(self.root),
            val_fraction=h.val_fraction,
            split_seed=h.split_seed,
            download=h.download,
            fallback=h.fallback,
        )

    @property
    def num_classes(self) -> int | None:
        return IMAGES[self.hparams.dataset].classes

    @property
    def num_node_features(self) -> int:
        """Mean intensity per channel and the centroid's two coordinates; linked into models by scripts/fit.py."""
        return IMAGES[self.hparams.dataset].native_channels + 2

    def options(self) -> dict:
        """What the graphs depend on: the cache's key."""
        h = self.hparams
        return {
            "format": CACHE_FORMAT,
            "dataset": h.dataset,
            "nodes": h.nodes,
            "n_segments": h.n_segments,
            "compactness": h.compactness,
            "grid_size": h.grid_size,
            "k": h.k,
            "val_fraction": h.val_fraction,
            "split_seed": h.split_seed,
        }

    def cache_path(self, source: str) -> Path:
        options = {**self.options(), "source": source}
        key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
        return self.root / "image_graphs" / f"{self.hparams.dataset}_{self.hparams.nodes}_{key}.pt"

    def prepare_data(self) -> None:
        self.images.prepare_data()
        self.graphs()

    def graphs(self) -> dict:
        """The cached graphs of every split, built (and cached) first when the cache is missing, from other options
        or damaged."""
        self.images.unpack()
        if not self.images.files_present():  # the image DataModule warns of its fallback, or fails, in one line
            self.images.setup()
        source = self.images.data_source or self.images.name
        options = {**self.options(), "source": source}
        path = self.cache_path(source)
        if path.exists():
            try:
                cached = torch.load(path, weights_only=True)
            except Exception as error:  # noqa: BLE001 - whatever torch.load fails with, the file is damaged
                rank_zero_warn(f"Graph cache {path} is damaged ({type(error).__name__}); rebuilding it")
            else:
                if isinstance(cached, dict) and cached.get("options") == options:
                    return cached
                rank_zero_warn(f"Graph cache {path} was built with other options; rebuilding it")
        workers = self.hparams.build_workers or len(os.sched_getaffinity(0))
        cached = {"options": options}
        self.images.setup()
        for split in ("train", "val", "test"):
            images, labels = getattr(self.images, f"{split}_set").tensors
            cached[split] = {**build_graphs(images, options, workers, f"{split} graphs"), "labels": labels}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")  # never a half-written file under the real name
        torch.save(cached, partial)
        partial.replace(path)
        return cached

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        cached = self.graphs()
        for split in ("train", "val", "test"):
            graphs = {key: value for key, value in cached[split].items() if key != "labels"}
            setattr(self, f"{split}_set", GraphBatches(graphs, cached[split]["labels"]))
        self.data_source = cached["options"]["source"]
        self.save_hyperparameters({**self.hparams, "data_source": self.data_source})

    def batch(self, split: Split = "test", n: int | None = None, device: torch.device | str = "cpu") -> tuple:
        """The first `n` graphs of a split (default one loader batch) as a step sees them, as one (Batch, labels):
        graphs do not concatenate as tensors do, so this is one loader batch of n."""
        wanted = self.batch_size if n is None else n
        if wanted < 1:
            raise ValueError(f"ask for at least one example, got n={wanted}")
        dataset = self.dataset(split)
        raw = dataset.__getitems__(list(range(min(wanted, len(dataset)))))
        moved = self.transfer_batch_to_device(self.on_before_batch_transfer(raw, 0), torch.device(device), 0)
        return self.prepare_batch(moved, augment=False)
