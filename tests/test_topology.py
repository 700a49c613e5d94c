"""The pixels' graph: the masked diagonal (no pixel sees itself), the pixels' positions, the grid neighbourhoods,
the strong links and the grid-neighbour fraction on hand-made matrices, and the model through fit.py with its
figures."""

import math

import pytest
import torch

from lightning_modules.experiments.topology import (
    PixelGraph,
    grid_neighbour_fraction,
    grid_neighbours,
    pixel_positions,
    strong_links,
)


def test_no_pixel_is_predicted_from_itself():
    torch.manual_seed(0)
    model = PixelGraph(image_shape=(1, 5, 6))
    with torch.no_grad():
        model.weight.normal_()  # the diagonal too: only the mask keeps it out
    image = torch.rand(1, 1, 5, 6)
    jacobian = torch.autograd.functional.jacobian(lambda x: model(x.view(1, 1, 5, 6)).flatten(), image.flatten())
    assert torch.equal(jacobian.diagonal(), torch.zeros(30))  # exactly: the masked weight is 0 * w
    off = ~torch.eye(30, dtype=torch.bool)
    # d out_i / d x_j = W_ij off the diagonal: one product, exact.
    assert torch.equal(jacobian[off], model.weight.detach()[off])


def test_positions_follow_the_flattened_images():
    positions = pixel_positions(2, 3)
    assert positions.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
    image = torch.tensor([[10 * r + c for c in range(3)] for r in range(2)])
    assert torch.equal(image.flatten(), 10 * positions[:, 0] + positions[:, 1])


def test_grid_neighbourhoods():
    """On a 3 x 3 grid the centre (pixel 4) has 4 edge neighbours and 8 in all; a corner 2 and 3."""
    four, eight = grid_neighbours(3, 3, 4), grid_neighbours(3, 3, 8)
    assert four[4].nonzero().flatten().tolist() == [1, 3, 5, 7]
    assert eight[4].nonzero().flatten().tolist() == [0, 1, 2, 3, 5, 6, 7, 8]
    assert four[0].nonzero().flatten().tolist() == [1, 3] and eight[0].nonzero().flatten().tolist() == [1, 3, 4]
    assert not four[2, 3]  # 2 = (0, 2) and 3 = (1, 0) are next to each other in memory, not on the grid
    with pytest.raises(ValueError, match="4 or 8"):
        grid_neighbours(3, 3, 6)


def test_strong_links_are_symmetric_thresholded_pairs():
    weights = torch.zeros(4, 4)
    weights[0, 1] = 0.3  # (0.3 + 0) / 2 = 0.15 > 0.1: a link, whichever side predicts the other
    weights[2, 3], weights[3, 2] = 0.3, -0.3  # opposite signs cancel: no link
    weights[1, 2], weights[2, 1] = -0.2, -0.1  # |-0.15| > 0.1: a (negative) link
    weights[3, 3] = 5.0  # the diagonal is never a link
    links = strong_links(weights, 0.1)
    assert torch.equal(links, links.T)
    assert torch.triu(links, 1).nonzero().tolist() == [[0, 1], [1, 2]]


def test_grid_neighbour_fraction_of_a_hand_made_graph():
    """3 x 3 grid: links 0-1 (edge), 2-5 (edge), 0-4 (corner) and 0-8 (far): half are 4-neighbours, three
    quarters 8-neighbours."""
    links = torch.zeros(9, 9, dtype=torch.bool)
    for i, j in ((0, 1), (2, 5), (0, 4), (0, 8)):
        links[i, j] = links[j, i] = True
    assert grid_neighbour_fraction(links, 3, 3, 4) == 0.5
    assert grid_neighbour_fraction(links, 3, 3, 8) == 0.75
    assert math.isnan(grid_neighbour_fraction(torch.zeros(9, 9, dtype=torch.bool), 3, 3, 4))


def test_colour_images_are_refused():
    with pytest.raises(ValueError, match="single-channel"):
        PixelGraph(image_shape=(3, 32, 32))


def test_fast_dev_run(data_root, fit_in_process, tmp_path):
    result = fit_in_process(
        "--model", "topology", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/grid4_fraction = " in result.stdout and "test/grid8_fraction = " in result.stdout
    assert not list(tmp_path.glob("**/*.png"))  # fast_dev_run's dummy logger: no figures


def test_a_logged_run_writes_the_figures(data_root, fit_in_process, tmp_path):
    result = fit_in_process(
        "--model", "topology", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--data.root", str(data_root), "--data.batch_size", "16",
        "--model.lr", "0.1", "--model.link_threshold", "0.1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "runs" / "topology" / "version_0" / "topology"
    assert sorted(p.name for p in folder.glob("*.png")) == ["links.png", "weights.png"]
