"""Images to graphs: superpixel and grid graphs of hand-made images, the Gaussian edge weights against the benchmark's
dense formula, the batches against graphs built one at a time, the split, and the cache (reused, rebuilt when the
options change or the file is damaged, with one line saying so)."""

import warnings

import numpy as np
import pytest
import torch

import datamodules.image_graphs as image_graphs
from conftest import write_mnist
from datamodules import DATAMODULES
from datamodules.image_graphs import ImageGraphDataModule, gaussian_edge_weights, image_graph
from datamodules.images import MNISTDataModule

SUPERPIXELS = {"nodes": "superpixels", "n_segments": 4, "compactness": 0.25, "grid_size": 7, "k": 8}
QUADRANT_CENTRE = 6.5 / 28  # the mean row (column) 0..13 of a 14-pixel quadrant, as a fraction of the side


def quadrants(values: tuple[int, int, int, int]) -> np.ndarray:
    """A 1x28x28 image of four constant quadrants: top-left, top-right, bottom-left, bottom-right."""
    image = np.zeros((1, 28, 28), np.uint8)
    for (rows, cols), value in zip([(0, 0), (0, 1), (1, 0), (1, 1)], values, strict=True):
        image[0, rows * 14 : rows * 14 + 14, cols * 14 : cols * 14 + 14] = value
    return image


def test_superpixels_of_four_quadrants_are_the_quadrants() -> None:
    """Asked for 4 segments, SLIC at the benchmark's low compactness follows the intensity edges: one node per
    quadrant, with the quadrant's intensity and centre; 4 nodes is fewer than k + 1, so every node receives an edge
    from each of the other three."""
    features, edges = image_graph(quadrants((0, 85, 170, 255)), SUPERPIXELS)
    order = np.lexsort((features[:, 2], features[:, 1]))  # by row, then column of the centroid
    near, far = QUADRANT_CENTRE, QUADRANT_CENTRE + 0.5
    expected = [[0, near, near], [85 / 255, near, far], [170 / 255, far, near], [1, far, far]]
    # float32 features: a mean of 196 equal values divided by 255 or 28 is within a few ulps.
    np.testing.assert_allclose(features[order], expected, rtol=1e-6, atol=1e-7)
    assert {(int(j), int(i)) for j, i in edges.T} == {(j, i) for i in range(4) for j in range(4) if j != i}


def test_colour_superpixels_carry_the_mean_colour() -> None:
    image = quadrants((0, 85, 170, 255))
    colour = np.concatenate([image, 255 - image, image // 5])
    features, _ = image_graph(colour, SUPERPIXELS)
    order = np.lexsort((features[:, 4], features[:, 3]))
    levels = np.array([0, 85, 170, 255])
    expected = np.stack([levels, 255 - levels, levels // 5], axis=1) / 255
    np.testing.assert_allclose(features[order, :3], expected, rtol=1e-6, atol=1e-7)


def test_superpixels_of_a_digit_like_image_are_at_most_n_segments_with_k_edges_each() -> None:
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 4:24, 12:16] = 255  # a "1"
    image[0, 4:8, 8:12] = 200
    features, edges = image_graph(image, {**SUPERPIXELS, "n_segments": 75})
    n = len(features)
    assert 20 < n <= 75
    assert np.bincount(edges[1], minlength=n).tolist() == [8] * n  # k edges into every node
    assert (edges[0] != edges[1]).all()
    # SLIC follows the strokes' edges at this compactness: some nodes lie on the stroke, most on the black ground.
    assert features[:, 0].max() > 0.7 and np.median(features[:, 0]) == 0.0


def test_grid_nodes_are_the_patches_and_edges_come_from_the_nearest_centroids() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, 28, 28)).astype(np.uint8)
    features, edges = image_graph(image, {**SUPERPIXELS, "nodes": "grid", "grid_size": 7})
    assert features.shape == (49, 3)
    patches = image[0].reshape(7, 4, 7, 4).transpose(0, 2, 1, 3).reshape(49, 16)
    # float64 means of 16 bytes, stored as float32: relative error 2^-24.
    np.testing.assert_allclose(features[:, 0], patches.mean(1) / 255, rtol=1e-6)
    centres = (np.arange(7) * 4 + 1.5) / 28
    np.testing.assert_allclose(
        features[:, 1:], np.stack(np.meshgrid(centres, centres, indexing="ij"), -1).reshape(49, 2), rtol=1e-6
    )
    distance = np.linalg.norm(features[:, None, 1:] - features[None, :, 1:], axis=-1)
    np.fill_diagonal(distance, np.inf)
    for node in range(49):
        sources = edges[0, edges[1] == node]
        assert len(sources) == 8
        # Ties on a grid make the neighbours' identity ambiguous; their distances are not.
        np.testing.assert_allclose(np.sort(distance[node, sources]), np.sort(distance[node])[:8], rtol=1e-6)


def test_gaussian_edge_weights_are_the_benchmarks_symmetrised_kernel() -> None:
    """benchmarking-gnns (data/superpixels.py): A = exp(-(dist / sigma)^2), sigma_i the mean distance of node i to its
    k nearest, A <- (A + A^T) / 2, read at the kNN edges; written here with dense matrices in float64."""
    rng = np.random.default_rng(1)
    centroids, k = rng.random((7, 2)), 3
    distance = np.linalg.norm(centroids[:, None] - centroids[None], axis=-1)
    off_diagonal = distance + np.diag(np.full(7, np.inf))
    nearest = np.argsort(off_diagonal, axis=1)[:, :k]
    sigma = np.take_along_axis(distance, nearest, 1).mean(1, keepdims=True)
    dense = np.exp(-((distance / sigma) ** 2))
    dense = (dense + dense.T) / 2
    edge_index = torch.tensor(np.stack([nearest.ravel(), np.repeat(np.arange(7), k)]))
    weights = gaussian_edge_weights(torch.tensor(centroids), edge_index)
    # float64 throughout (sigma carries a 1e-8 guard against zero, far below this tolerance).
    torch.testing.assert_close(weights, torch.tensor(dense[edge_index[1], edge_index[0]]), rtol=1e-7, atol=1e-9)


@pytest.fixture
def tiny_root(tmp_path):
    write_mnist(tmp_path / "data")
    return tmp_path / "data"


def graphs_of(root, **options) -> ImageGraphDataModule:
    datamodule = ImageGraphDataModule(str(root), batch_size=16, build_workers=1, **options)
    datamodule.setup("fit")
    return datamodule


def test_registered_and_split_as_the_image_datamodule(tiny_root) -> None:
    assert DATAMODULES["image_graphs"] is ImageGraphDataModule
    graphs, images = graphs_of(tiny_root), MNISTDataModule(str(tiny_root))
    images.setup("fit")
    for split in ("train", "val", "test"):
        assert torch.equal(graphs.dataset(split).labels, images.dataset(split).tensors[1])
    assert graphs.num_node_features == 3 and graphs.num_classes == 10


def test_a_batch_holds_the_graphs_of_its_images(tiny_root) -> None:
    """The batch of graphs 5 and 2 is their graphs built one at a time from the image split, stacked with shifted
    node indices; edge weights come from each graph's own centroids."""
    graphs, images = graphs_of(tiny_root), MNISTDataModule(str(tiny_root))
    images.setup("fit")
    batch, labels = graphs.dataset("train").__getitems__([5, 2])
    singles = [image_graph(images.dataset("train").tensors[0][i].numpy(), graphs.options()) for i in (5, 2)]
    assert batch.num_graphs == 2 and labels.tolist() == images.dataset("train").tensors[1][[5, 2]].tolist()
    torch.testing.assert_close(batch.x, torch.from_numpy(np.concatenate([x for x, _ in singles])), rtol=0, atol=0)
    shift = len(singles[0][0])
    expected = np.concatenate([singles[0][1], singles[1][1] + shift], axis=1)
    assert torch.equal(batch.edge_index, torch.from_numpy(expected))
    assert batch.batch.tolist() == [0] * shift + [1] * len(singles[1][0])
    second = torch.from_numpy(singles[1][0][:, 1:]).double()
    weights = gaussian_edge_weights(second, torch.from_numpy(singles[1][1])).float()
    torch.testing.assert_close(batch.edge_attr[singles[0][1].shape[1] :, 0], weights, rtol=1e-6, atol=1e-7)


def test_the_cache_is_reused_and_rebuilt_when_the_options_change(tiny_root, monkeypatch) -> None:
    first = graphs_of(tiny_root)
    (path,) = (tiny_root / "image_graphs").glob("*.pt")
    built = []
    original = image_graphs.build_graphs
    monkeypatch.setattr(image_graphs, "build_graphs", lambda *args: built.append(args[1]) or original(*args))
    again = graphs_of(tiny_root)
    assert built == []  # read from the cache
    assert torch.equal(again.dataset("test").x, first.dataset("test").x)
    other = graphs_of(tiny_root, k=4)
    assert len(built) == 3 and built[0]["k"] == 4  # train, val and test, with the new option
    assert len(list((tiny_root / "image_graphs").glob("*.pt"))) == 2
    assert np.bincount(other.dataset("val").edges[1].numpy()).max() <= 4 * len(other.dataset("val"))
    assert other.cache_path("MNIST") != path


def rebuilds(root) -> tuple[ImageGraphDataModule, list[str]]:
    """The lines said while the graphs are set up again."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = graphs_of(root)
    return graphs, [str(w.message) for w in caught if "Graph cache" in str(w.message)]


def test_a_damaged_or_foreign_cache_is_rebuilt_with_one_line(tiny_root) -> None:
    first = graphs_of(tiny_root)
    (path,) = (tiny_root / "image_graphs").glob("*.pt")
    path.write_bytes(path.read_bytes()[:1000])
    rebuilt, lines = rebuilds(tiny_root)
    assert lines == [f"Graph cache {path} is damaged (RuntimeError); rebuilding it"]
    assert torch.equal(rebuilt.dataset("train").x, first.dataset("train").x)
    cached = torch.load(path, weights_only=True)
    cached["options"]["k"] = 5
    torch.save(cached, path)
    assert rebuilds(tiny_root)[1] == [f"Graph cache {path} was built with other options; rebuilding it"]
    assert rebuilds(tiny_root)[1] == []  # and then reused


def test_the_parallel_build_equals_the_serial_one(tiny_root, monkeypatch) -> None:
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (40, 1, 28, 28)).astype(np.uint8))
    options = graphs_of(tiny_root).options()
    serial = image_graphs.build_graphs(images, options, 1, "serial")
    monkeypatch.setattr(image_graphs, "IMAGES_PER_CHUNK", 10)
    parallel = image_graphs.build_graphs(images, options, 2, "parallel")
    for key, value in serial.items():
        assert torch.equal(parallel[key], value), key


@pytest.mark.parametrize(("flag", "value"), [("k", 0), ("compactness", 0.0), ("build_workers", 0)])
def test_bad_options_are_one_line(flag: str, value) -> None:
    with pytest.raises(ValueError, match=f"^--data.{flag} must be"):
        ImageGraphDataModule(**{flag: value})
