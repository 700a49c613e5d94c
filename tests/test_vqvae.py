"""The VQ-VAE: the straight-through gradient, the nearest-code lookup against a brute-force search, the moving
averages of appendix A.1 on hand-made vectors, dead-code restarts, the per-epoch code usage, the latent grid of
the Encodes contract, and scripts/fit.py end to end."""

import math

import pytest
import torch

from lightning_modules.protocols import Encodes, missing
from lightning_modules.vq.quantizer import CodeUsage, VectorQuantizer
from lightning_modules.vq.vqvae import VQVAE


def grid(rows: list[list[float]]) -> torch.Tensor:
    """Vectors (N, D) as a 1 x N grid of D-vectors, (1, D, 1, N): the layout the quantiser takes."""
    return torch.tensor(rows).T[None, :, None, :]


def test_the_gradient_reaching_the_encoder_is_the_gradient_at_the_quantised_output() -> None:
    torch.manual_seed(0)
    model = VQVAE(image_shape=(1, 28, 28))
    x = torch.rand(4, 1, 28, 28)
    z = model.encoder(x)
    quantized = model.quantizer(z).quantized
    loss = torch.nn.functional.mse_loss(torch.sigmoid(model.decoder(quantized)), x)
    at_encoder, at_quantized = torch.autograd.grad(loss, [z, quantized])
    # z_q = z + (e - z).detach() has the identity Jacobian in z: the same floats, not merely close ones.
    assert torch.equal(at_encoder, at_quantized)
    assert at_quantized.abs().sum() > 0


def test_quantisation_picks_the_nearest_code() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=32, dim=4)
    z = torch.randn(3, 4, 5, 5)
    indices = quantizer.nearest(z)
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 4).double()
    codebook = quantizer.codebook.double()
    distances = torch.stack([((codebook - v) ** 2).sum(1) for v in vectors])  # (N, K), one vector at a time
    chosen = distances.gather(1, indices.reshape(-1, 1)).squeeze(1)
    # The float32 lookup may swap two codes whose squared distances differ by less than its rounding: terms of
    # size ||e||^2, 2 z.e ~ 10 carry errors of ~10 * 6e-8 each; 1e-5 is well above that.
    assert torch.all(chosen - distances.min(1).values <= 1e-5)
    two_best = distances.topk(2, dim=1, largest=False).values
    clear = two_best[:, 1] - two_best[:, 0] > 1e-5
    assert clear.float().mean() > 0.9
    assert torch.equal(indices.reshape(-1)[clear], distances.argmin(1)[clear])
    assert torch.equal(quantizer.quantize(z), quantizer.codebook[indices].permute(0, 3, 1, 2))


def test_the_moving_averages_follow_appendix_a1_and_reach_the_mean_of_the_assigned_vectors() -> None:
    gamma = 0.9
    quantizer = VectorQuantizer(num_codes=3, dim=2, decay=gamma, dead_after=1000)
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, -10.0]])
    quantizer.codebook.copy_(codes)
    quantizer.code_sum.copy_(codes)
    quantizer.idle_steps.zero_()  # no restart: this test is about the averages
    z = grid([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]])  # the first two go to code 0, the third to code 1
    indices = quantizer.nearest(z)
    assert indices.flatten().tolist() == [0, 0, 1]
    quantizer.update_codebook(z, indices)
    # N_i = gamma N_i + (1 - gamma) n_i and m_i = gamma m_i + (1 - gamma) sum of its vectors, from N = 1, m = e.
    n = torch.tensor([gamma + (1 - gamma) * 2, gamma + (1 - gamma) * 1, gamma])
    m = torch.stack(
        [
            (1 - gamma) * torch.tensor([1.0, 1.0]),
            gamma * codes[1] + (1 - gamma) * torch.tensor([9.0, 11.0]),
            gamma * codes[2],
        ]
    )
    # Float32 arithmetic on numbers of size <= 10: a few ulps, ~1e-6.
    torch.testing.assert_close(quantizer.cluster_size, n, rtol=0, atol=1e-6)
    torch.testing.assert_close(quantizer.code_sum, m, rtol=0, atol=1e-5)
    torch.testing.assert_close(quantizer.codebook, m / n[:, None], rtol=0, atol=1e-5)
    assert torch.equal(quantizer.codebook[2], codes[2])  # an unused code stays where it is (m and N decay alike)
    for _ in range(300):
        quantizer.update_codebook(z, quantizer.nearest(z))
    # The initial pseudo-vector's weight has decayed to gamma^301 ~ 1e-14: each code sits at its vectors' mean.
    torch.testing.assert_close(quantizer.codebook[:2], torch.tensor([[0.5, 0.5], [9.0, 11.0]]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_a_code_unused_for_dead_after_steps_restarts_at_an_encoder_output(update: str) -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=3, dim=2, update=update, dead_after=2)
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [100.0, -100.0]]))
    if update == "ema":
        quantizer.code_sum.copy_(quantizer.codebook)
    quantizer.idle_steps.zero_()
    rows = [[1.0, 0.0], [0.0, 1.0], [9.0, 11.0], [11.0, 9.0]]
    z = grid(rows)
    quantizer.update_codebook(z, quantizer.nearest(z))
    far = torch.tensor([100.0, -100.0])
    assert torch.equal(quantizer.codebook[2].detach(), far)  # unused for one step: not yet dead
    quantizer.update_codebook(z, quantizer.nearest(z))
    restarted = quantizer.codebook[2].detach()
    assert any(torch.equal(restarted, torch.tensor(row)) for row in rows)  # now one of the batch's vectors
    assert quantizer.idle_steps.tolist() == [0, 0, 0]
    if update == "ema":  # the restarted code's averages hold that one vector
        assert quantizer.cluster_size[2] == 1 and torch.equal(quantizer.code_sum[2], restarted)


def test_the_first_step_restarts_every_code_its_batch_leaves_unused() -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=16, dim=2)
    z = torch.randn(2, 2, 4, 4) * 0.01 + 50  # far from every initial code N(0, 1): one code takes them all
    indices = quantizer.nearest(z)
    quantizer.update_codebook(z, indices)
    rows = z.permute(0, 2, 3, 1).reshape(-1, 2)
    unused = [k for k in range(16) if k not in indices.flatten().tolist()]
    assert len(unused) == 15
    for k in unused:
        assert (quantizer.codebook[k] == rows).all(1).any()


def test_code_usage_counts_over_the_epoch() -> None:
    usage = CodeUsage(num_codes=4)
    usage.update(torch.tensor([[0, 0], [1, 1]]))
    usage.update(torch.tensor([2]))  # the epoch's counts: 2, 2, 1, 0
    figures = usage.compute()
    p = [0.4, 0.4, 0.2]
    # Written out: exp(-sum p log p); float32 result of a float64 sum, to its rounding.
    assert figures["perplexity"].item() == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-6)
    assert figures["codes_used"].item() == 0.75


@pytest.mark.parametrize(("side", "cells"), [(28, 7), (32, 8)])
def test_encode_gives_a_grid_that_decode_quantises(side: int, cells: int) -> None:
    torch.manual_seed(0)
    model = VQVAE(image_shape=(1, side, side)).eval()
    assert not missing(model, Encodes)
    x = torch.rand(2, 1, side, side)
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 16, cells, cells) == (2, *model.latent_shape)
        assert model.code_indices(x).shape == (2, cells, cells)
        images = model.decode(z)
        assert images.shape == x.shape and images.min() >= 0 and images.max() <= 1
        # decode quantises: any latent that has the same nearest codes decodes to the same image.
        assert torch.equal(images, model.decode(model.quantizer.quantize(z)))
        assert not torch.equal(images, model.decode(z, quantize=False))


def test_fast_dev_run(data_root, fit_in_process) -> None:
    result = fit_in_process(
        "--model", "vqvae", "--trainer.fast_dev_run", "true", "--data.root", str(data_root), "--data.batch_size", "16"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in ("test/mse_over_variance", "test/codes_used", "test/perplexity"):
        assert f"{metric} = " in result.stdout
