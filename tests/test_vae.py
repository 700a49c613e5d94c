"""The VAE's loss against independent computations."""

import math

import torch

from lightning_modules.vae import VAE, bernoulli_nll, gaussian_kl


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    monte_carlo = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(gaussian_kl(mu, logvar), monte_carlo, atol=0.03, rtol=0.01)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_bernoulli_nll_is_the_log_likelihood():
    logits, x = torch.tensor([[0.0, 2.0, -1.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).sum(1)
    torch.testing.assert_close(bernoulli_nll(logits, x), expected)
    assert math.isclose(bernoulli_nll(torch.zeros(1, 784), torch.ones(1, 784)).item(), 784 * math.log(2), rel_tol=1e-6)


def test_neg_elbo_shape_and_gradients_reach_the_encoder():
    model = VAE(image_shape=(1, 8, 8), hidden_dim=16, latent_dim=2)
    x = torch.rand(5, 1, 8, 8)
    loss = model.neg_elbo(x)
    assert loss.shape == (5,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert model.encoder[1].weight.grad.abs().sum() > 0
    assert model.sample(3).shape == (3, 1, 8, 8)
