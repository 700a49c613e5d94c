"""The VAE's loss and its importance-weighted bound against independent computations."""

import math

import pytest
import torch

from lightning_modules.autoencoders.vae import VAE, bernoulli_nll, gaussian_kl, gaussian_nll, reparameterise


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    z = q.sample((200_000,))
    estimate = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    # 200k samples of log q - log p (spread 1-2 nats): standard errors <= 0.005 nats; 0.03 is 6 of them.
    torch.testing.assert_close(gaussian_kl(mu, logvar), estimate, atol=0.03, rtol=0.01)
    assert torch.allclose(gaussian_kl(torch.zeros(2, 5), torch.zeros(2, 5)), torch.zeros(2))


def test_bernoulli_nll_is_the_log_likelihood():
    logits, x = torch.tensor([[[[0.0, 2.0, -1.0]]]]), torch.tensor([[[[1.0, 0.0, 0.3]]]])
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    torch.testing.assert_close(bernoulli_nll(logits, x), expected)
    half = bernoulli_nll(torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28))
    assert math.isclose(half.item(), 784 * math.log(2), rel_tol=1e-6)
    big = torch.tensor([[[[80.0, -80.0]]]])  # stable far from 0, where log(sigmoid) would underflow
    torch.testing.assert_close(bernoulli_nll(big, torch.tensor([[[[0.0, 1.0]]]])), torch.tensor([160.0]))


def test_gaussian_nll_matches_torch_distributions():
    mean, x, log_sigma = torch.rand(3, 1, 4, 4), torch.rand(3, 1, 4, 4), torch.tensor(-1.3)
    expected = -torch.distributions.Normal(mean, log_sigma.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(mean, log_sigma, x), expected)


def test_reparameterised_sample_has_the_posterior_mean_and_variance():
    torch.manual_seed(0)
    mu, logvar = torch.tensor([[1.5, -2.0]]), torch.tensor([[0.4, -1.0]])
    z = reparameterise(mu.expand(100_000, 2), logvar.expand(100_000, 2))
    # Standard errors with sigma <= 1.23: the mean's sigma / sqrt(n) <= 0.004, the variance's
    # sigma^2 sqrt(2 / n) <= 0.007; the tolerances are 5 of them.
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), logvar[0].exp(), atol=0.02, rtol=0.02)


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_neg_elbo_shape_and_gradients_reach_the_encoder(network):
    model = VAE(image_shape=(1, 8, 8), network=network, hidden_dim=16, latent_dim=2, conv_channels=(4, 8))
    x = torch.rand(5, 1, 8, 8)
    loss = model.neg_elbo(x)
    assert loss.shape == (5,) and torch.isfinite(loss).all()
    loss.mean().backward()
    first_layer = next(model.encoder.parameters())
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0
    assert model.sample(3).shape == (3, 1, 8, 8)
    codes = model.encode(x)
    assert codes.shape == (5, 2) and torch.equal(codes, model.posterior(x)[0])
    decoded = model.decode(codes)
    assert decoded.shape == x.shape and decoded.min() >= 0 and decoded.max() <= 1


def monte_carlo(estimates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the first (sample) axis and its standard error."""
    return estimates.mean(0), estimates.std(0) / len(estimates) ** 0.5


def repeated(x: torch.Tensor, n: int) -> torch.Tensor:
    """n copies of the batch in one batch (copy-major): one forward pass draws n independent samples per image."""
    return x.repeat(n, *[1] * (x.dim() - 1))


def test_neg_elbo_is_the_sum_of_its_terms_computed_independently():
    """-ELBO with one sample = -log p(x|z) + log q(z|x) - log p(z) in expectation; compared on average."""
    torch.manual_seed(0)
    model = VAE(image_shape=(1, 6, 6), hidden_dim=12, latent_dim=3)
    x = torch.rand(2, 1, 6, 6)
    with torch.no_grad():
        mu, logvar = model.posterior(x)
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        z = q.sample((20_000,))  # (S, B, D)
        p_x = torch.distributions.Bernoulli(
            logits=model.decoder(z.flatten(0, 1)).view(20_000, 2, -1), validate_args=False
        )
        log_joint = p_x.log_prob(x.flatten(1)).sum(-1) + torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        reference, reference_error = monte_carlo(q.log_prob(z).sum(-1) - log_joint)
        ours, our_error = monte_carlo(model.neg_elbo(repeated(x, 2000)).view(2000, 2))
    # Both are Monte Carlo means: 5 standard errors of their difference (float error is far below).
    torch.testing.assert_close(
        ours, reference, atol=(5 * (reference_error**2 + our_error**2).sqrt()).max().item(), rtol=0
    )


def test_iwae_bound_is_above_the_elbo_bound_and_tightens_with_k():
    """-ELBO >= IWAE_k >= IWAE_K for k < K (Burda et al. 2015, theorem 1), as expectations over noise."""
    torch.manual_seed(0)
    model = VAE(image_shape=(1, 6, 6), hidden_dim=12, latent_dim=3)
    x = torch.rand(4, 1, 6, 6)
    with torch.no_grad():
        neg_elbo, neg_elbo_error = monte_carlo(model.neg_elbo(repeated(x, 20_000)).view(20_000, 4))
        iwae_1, iwae_1_error = monte_carlo(model.iwae_nll(repeated(x, 20_000), 1).view(20_000, 4))
        iwae_3, iwae_3_error = monte_carlo(model.iwae_nll(repeated(x, 10_000), 3).view(10_000, 4))
        # chunk_rows 48000: 3 samples of the 16000 rows per chunk, so the 10 samples come in chunks of 3, 3, 3, 1.
        iwae_10, iwae_10_error = monte_carlo(model.iwae_nll(repeated(x, 4000), 10, chunk_rows=48_000).view(4000, 4))
    # A difference of Monte Carlo means counts when it exceeds 5 standard errors of the difference. For this
    # model the gaps are about 0.15 nats (k 1 to 3) and 0.04 (3 to 10) against errors of 0.003-0.006; the gap
    # from 10 to 100 samples (0.01) would need far more samples to resolve.
    five_sigma = lambda a, b: 5 * (a**2 + b**2).sqrt()  # noqa: E731
    assert ((iwae_1 - neg_elbo).abs() < five_sigma(iwae_1_error, neg_elbo_error)).all()  # k = 1 is the ELBO
    assert (neg_elbo - iwae_3 > five_sigma(neg_elbo_error, iwae_3_error)).all()
    assert (iwae_3 - iwae_10 > five_sigma(iwae_3_error, iwae_10_error)).all()


def test_iwae_estimate_is_exact_when_q_is_the_posterior():
    """Independent check of the weights: with a decoder that ignores z, p(z|x) = p(z); a posterior equal
    to the prior makes every weight p(x), so the estimate is -log p(x) for any k."""
    model = VAE(image_shape=(1, 4, 4), hidden_dim=8, latent_dim=2)
    with torch.no_grad():
        for module in (model.encoder, model.decoder):
            for parameter in module.parameters():
                parameter.zero_()
        model.decoder.net[0][-1].bias.fill_(0.7)  # pixel logits 0.7 everywhere, whatever z
    x = torch.rand(3, 1, 4, 4)
    exact = (
        -torch.distributions.Bernoulli(logits=torch.full((16,), 0.7), validate_args=False).log_prob(x.flatten(1)).sum(1)
    )
    torch.testing.assert_close(model.iwae_nll(x, 7), exact)


@pytest.mark.parametrize(("step", "weight"), [(0, 0.0), (5, 1.0), (10, 2.0), (25, 2.0)])
def test_kl_warmup_ramps_the_weight_linearly_to_beta(step, weight, monkeypatch):
    monkeypatch.setattr(VAE, "global_step", property(lambda self: step))  # the trainer's step count
    model = VAE(image_shape=(1, 4, 4), hidden_dim=8, latent_dim=2, beta=2.0, kl_warmup_steps=10)
    assert model.kl_weight() == pytest.approx(weight)  # beta * min(1, step / 10), exact in floats
    assert VAE(image_shape=(1, 4, 4), hidden_dim=8, latent_dim=2, beta=0.5).kl_weight() == 0.5


def test_bad_options_are_value_errors():
    with pytest.raises(ValueError, match="decoder"):
        VAE(decoder="poisson")
    with pytest.raises(ValueError, match="network"):
        VAE(network="transformer")
    with pytest.raises(ValueError, match="too small"):
        VAE(image_shape=(1, 2, 2), network="conv", conv_channels=(4, 8))
    with pytest.raises(ValueError, match="activation must be one of relu"):
        VAE(activation="swish")


@pytest.mark.parametrize("network", ["mlp", "conv"])
def test_activation_flag_sets_every_nonlinearity(network):
    model = VAE(
        image_shape=(1, 8, 8), network=network, hidden_dim=8, latent_dim=2, conv_channels=(4,), activation="silu"
    )
    kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.SiLU | torch.nn.ReLU)}
    assert kinds == {torch.nn.SiLU}
    x = torch.rand(3, 1, 8, 8)
    assert model.decode(model.encode(x)).shape == x.shape


def test_conv_gaussian_vae_through_fit_writes_the_callback_images(data_root, tmp_path, fit_in_process):
    """One short real epoch through fit.py's main with configs/vae.yaml's callbacks: the grids (prior samples
    included) and the embedding plot land in the run folder and TensorBoard."""
    result = fit_in_process(
        "--model", "vae", "--data.root", str(data_root), "--model.network", "conv", "--model.decoder", "gaussian",
        "--model.kl_warmup_steps", "5", "--model.iwae_samples", "20", "--model.iwae_test_images", "10",
        "--data.batch_size", "16", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/neg_elbo_nats = " in result.stdout and "test/iwae_nll_nats = " in result.stdout
    run = tmp_path / "runs" / "vae" / "version_0"
    pngs = {p.relative_to(run).as_posix() for p in run.glob("*/*.png")}
    walks = {f"latent_walk/{name}_epoch000.png" for name in ("lerp", "slerp", "random_walk")}
    grids = {"reconstructions/grid_epoch000.png", "samples/grid_epoch000.png", "latent_embedding/test.png"}
    assert pngs == grids | walks
    assert list(run.glob("events.out.tfevents.*"))


def test_cosine_decay_anneals_the_learning_rate_to_zero():
    import lightning as L
    from torch.utils.data import DataLoader

    images = torch.rand(32, 1, 8, 8)
    model = VAE(image_shape=(1, 8, 8), hidden_dim=8, latent_dim=2, lr=0.01, cosine_decay=True, iwae_samples=0)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(model, DataLoader(list(zip(images, torch.zeros(32), strict=True)), batch_size=8))
    assert trainer.global_step == 8
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert VAE(image_shape=(1, 8, 8), cosine_decay=False).configure_optimizers().param_groups[0]["lr"] == 1e-3


def test_written_training_metrics_come_from_the_step_they_are_written_at(tmp_path):
    """The VAE logs its step metrics only at the steps the logger writes; with beta 1 and no warm-up the
    loss and -ELBO are the same number, so a value logged at another step would show as a mismatch."""
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    images = torch.rand(64, 1, 8, 8)
    model = VAE(image_shape=(1, 8, 8), hidden_dim=8, latent_dim=2, lr=0.01, iwae_samples=0)
    logger = CSVLogger(tmp_path, name="vae")
    trainer = L.Trainer(max_steps=12, log_every_n_steps=3, logger=logger, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False)  # fmt: skip
    trainer.fit(model, DataLoader(list(zip(images, torch.zeros(64), strict=True)), batch_size=4))
    with open(f"{logger.log_dir}/metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("train/loss")]
    assert [int(row["step"]) for row in rows] == [2, 5, 8, 11]
    for row in rows:
        assert float(row["train/loss"]) == pytest.approx(float(row["train/neg_elbo_nats"]), rel=1e-6)
