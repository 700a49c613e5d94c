"""The stochastic MLP: its layers' samples are reparameterised (gradients reach mu and log sigma), the S-sample
prediction is the mean of S independent passes, its KL is the Gaussian's, and the model trains through fit.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from lightning_modules.experiments.stochastic_mlp import (
    StochasticMLP,
    StochasticMLPClassifier,
    kl_to_standard_normal,
    reparameterise,
)


def test_the_sample_is_a_reparameterisation():
    torch.manual_seed(0)
    mu = torch.randn(5, 7, requires_grad=True)
    log_sigma = torch.randn(5, 7).mul(0.5).requires_grad_()
    z = reparameterise(mu, log_sigma, torch.Generator().manual_seed(1))
    (z * torch.arange(7.0)).sum().backward()
    # z = mu + sigma eps: dz/dmu = 1 and dz/dlog sigma = sigma eps = z - mu. The two sides round differently, by a
    # few float32 ulps of values of order 10.
    torch.testing.assert_close(mu.grad, torch.arange(7.0).expand(5, 7))
    torch.testing.assert_close(log_sigma.grad, (z - mu).detach() * torch.arange(7.0), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(z, mu)
    shared = reparameterise(mu.detach(), log_sigma.detach(), torch.Generator().manual_seed(1), shared=True)
    eps = (shared - mu) / log_sigma.exp()
    torch.testing.assert_close(eps, eps[:1].expand(5, 7))  # one draw for every row


def test_gradients_reach_every_layers_mu_and_log_sigma():
    torch.manual_seed(0)
    network = StochasticMLP((1, 4, 4), 3, widths=(6, 5))
    logits, _ = network.sample_logits(torch.rand(8, 1, 4, 4))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])).backward()
    for layer, width in zip(network.hidden, (6, 5), strict=True):
        mu_rows, log_sigma_rows = layer.weight.grad[:width], layer.weight.grad[width:]
        assert mu_rows.abs().sum() > 0 and log_sigma_rows.abs().sum() > 0


def test_the_prediction_averages_independent_passes():
    torch.manual_seed(0)
    model = StochasticMLPClassifier(image_shape=(1, 4, 4), num_classes=3).eval()
    images = torch.rand(6, 1, 4, 4)
    predicted = model.predictive_log_probs(images, 8, torch.Generator().manual_seed(3)).exp()
    generator = torch.Generator().manual_seed(3)
    passes = [F.softmax(model.backbone.sample_logits(images, generator, shared=True)[0], -1) for _ in range(8)]
    passes = torch.stack(passes)
    # A log-mean-exp against a mean of softmaxes: float32 rounding of probabilities below 1.
    torch.testing.assert_close(predicted, passes.mean(0), rtol=1e-5, atol=1e-6)
    assert (passes[0] - passes[1]).abs().max() > 1e-4  # the passes drew different samples
    # An image's prediction is the same in a batch of its own.
    alone = model.predictive_log_probs(images[2:3], 8, torch.Generator().manual_seed(3)).exp()
    torch.testing.assert_close(alone, predicted[2:3], rtol=1e-5, atol=1e-7)  # another matmul shape: rounding


def test_the_plain_network_draws_nothing():
    network = StochasticMLP((1, 4, 4), 3, widths=(6,), stochastic=False)
    images = torch.rand(2, 1, 4, 4)
    (first, kl), (second, _) = network.sample_logits(images), network.sample_logits(images)
    assert torch.equal(first, second) and torch.equal(kl, torch.zeros(2))
    assert network.hidden[0].out_features == 6


def test_kl_is_the_closed_form_and_the_monte_carlo_estimate():
    torch.manual_seed(0)
    mu, log_sigma = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64) * 0.5
    q, prior = Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)
    ours = kl_to_standard_normal(mu, log_sigma)
    # torch's own closed form, in float64: equal to rounding.
    torch.testing.assert_close(ours, kl_divergence(q, prior).sum(), rtol=1e-10, atol=1e-12)
    n = 400_000
    z = q.sample((n,))
    log_ratio = (q.log_prob(z) - prior.log_prob(z)).sum(-1)
    # A Monte-Carlo mean of n draws is within 5 standard errors of the expectation but for odds of 1 in 1.7 million.
    assert abs(float(log_ratio.mean() - ours)) < 5 * float(log_ratio.std()) / math.sqrt(n)


def test_evaluate_reports_each_sample_count(data_root):
    from datamodules.images import MNISTDataModule

    datamodule = MNISTDataModule(root=str(data_root), batch_size=16, download=False, fallback=False)
    datamodule.prepare_data()
    datamodule.setup("test")
    model = StochasticMLPClassifier(image_shape=(1, 28, 28), num_classes=10).eval()
    with torch.no_grad():
        figures = model.evaluate(datamodule)
    assert set(figures) == {f"{name}_S{s}" for name in ("acc", "ece") for s in (1, 4, 16, 64)}


@pytest.mark.parametrize("flags", [(), ("--model.backbone.stochastic", "false"), ("--model.kl_weight", "0.01")])
def test_fast_dev_run(flags, data_root, fit_in_process):
    result = fit_in_process(
        "--model", "stochastic_mlp", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16", "--model.samples", "2", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc = " in result.stdout and "test/ece = " in result.stdout


def test_bad_sample_count_is_one_line(data_root, fit_in_process):
    from conftest import one_error_line

    result = fit_in_process("--model", "stochastic_mlp", "--data.root", str(data_root), "--model.samples", "0")
    assert "--model.samples must be at least 1, got 0" in one_error_line(result)
    result = fit_in_process(
        "--model", "stochastic_mlp", "--data.root", str(data_root),
        "--model.backbone", "lightning_modules.blocks.small_nets.MLP",
    )  # fmt: skip
    assert "--model.backbone MLP has no sample_logits" in one_error_line(result)
