"""EDM (Karras et al. 2022): the preconditioning's limits (Table 1), the loss against a loop port of eq. 8, the
samplers and the ODE inversion with the exact denoiser of a Gaussian, classifier-free guidance, and the model
through scripts/fit.py and sample.py."""

import math
from functools import partial

import pytest
import torch
from torch import nn

from conftest import fit_in_process_at, script_in_process_at
from lightning_modules.blocks.unet import UNet
from lightning_modules.diffusion.edm import EDM, NOISE_EMBEDDING_SCALE, EDMPrecond, draw_sigmas, edm_loss, parse_sampler
from lightning_modules.diffusion.edm_sampling import edm_sigmas, heun_sample, ode_encode, stochastic_sample

TINY = dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2)
TINY_FLAGS = [
    "--model.denoiser.base_channels", "8", "--model.denoiser.channel_mults", "[1, 2]",
    "--model.denoiser.attention_levels", "[1]", "--model.denoiser.num_heads", "2",
    "--model.sample_steps", "2", "--model.inversion_steps", "2",
]  # fmt: skip
QUIET = ("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false")
SIGMA_DATA = 0.7


class Recorder(nn.Module):
    """F = 0 that records what it is called with."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.calls = getattr(self, "calls", []) + [(x, t, y)]
        return torch.zeros_like(x)


def gaussian_denoiser(mu: float, s: float):
    """The exact D(x; sigma) = E[y | y + n = x] of data y ~ N(mu, s^2 I): (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""
    return lambda x, sigma: (s**2 * x + sigma**2 * mu) / (s**2 + sigma**2)


def tiny_edm(**overrides) -> EDM:
    torch.manual_seed(0)
    return EDM(denoiser=partial(UNet, **TINY), image_shape=(1, 28, 28), num_classes=10, **overrides)


# --- preconditioning and loss (Table 1, eq. 2) -------------------------------------------------------------
def test_preconditioning_limits() -> None:
    """Table 1 as sigma -> 0: D passes x through (c_skip -> 1, c_out ~ sigma, c_in -> 1/sigma_data); as sigma -> oo:
    D is F's output scaled by sigma_data (c_skip -> 0, c_out -> sigma_data, c_in ~ 1/sigma). In float64 the
    deviations from the limits are of order (sigma / sigma_data)^2 = 2e-12 and its inverse, hence rtol 1e-9."""
    precond = EDMPrecond(Recorder(), SIGMA_DATA)
    small, large = torch.tensor(1e-6, dtype=torch.float64), torch.tensor(1e6, dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = precond.coefficients(small)
    for value, limit in ((c_skip, 1.0), (c_out / small, 1.0), (c_in, 1 / SIGMA_DATA)):
        assert math.isclose(value.item(), limit, rel_tol=1e-9)
    c_skip, c_out, c_in, c_noise = precond.coefficients(large)
    assert math.isclose(c_skip.item() * (1e6 / SIGMA_DATA) ** 2, 1.0, rel_tol=1e-9)  # c_skip ~ sigma_data^2 / sigma^2
    assert math.isclose(c_out.item(), SIGMA_DATA, rel_tol=1e-9) and math.isclose(c_in.item() * 1e6, 1.0, rel_tol=1e-9)
    assert math.isclose(c_noise.item(), math.log(1e6) / 4, rel_tol=1e-12)


def test_denoiser_with_zero_network_is_the_skip_and_the_network_sees_c_in_x_and_c_noise() -> None:
    network = Recorder()
    precond = EDMPrecond(network, SIGMA_DATA, NOISE_EMBEDDING_SCALE)
    x, sigma = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.tensor([0.01, 1.0, 50.0], dtype=torch.float64)
    out = precond(x, sigma)
    c_skip, _, c_in, _ = precond.coefficients(sigma)
    torch.testing.assert_close(out, c_skip.view(-1, 1, 1, 1) * x, rtol=0, atol=0)
    seen_x, seen_t, _ = network.calls[0]
    torch.testing.assert_close(seen_x, c_in.view(-1, 1, 1, 1) * x)
    torch.testing.assert_close(seen_t, NOISE_EMBEDDING_SCALE * sigma.log() / 4)


@pytest.mark.parametrize("sigma", [0.01, 0.3, 1.0, 10.0, 80.0])
def test_loss_weight_makes_the_effective_target_variance_one(sigma: float) -> None:
    """With F = 0 the loss of eq. 2 is lambda ||c_skip x - y||^2 = ||F_target||^2 (eq. 8, lambda c_out^2 = 1), whose
    mean over zero-mean data of standard deviation sigma_data is 1 at every sigma. Each of the N = 200,000 squared
    unit Gaussians has variance 2, so their mean is 1 within 5 sqrt(2 / N) = 0.016."""
    generator = torch.Generator().manual_seed(0)
    y = SIGMA_DATA * torch.randn(200_000, 1, dtype=torch.float64, generator=generator)
    noise = torch.randn(y.shape, dtype=torch.float64, generator=generator)
    precond = EDMPrecond(Recorder(), SIGMA_DATA)
    sigmas = torch.full((len(y),), sigma, dtype=torch.float64)
    assert abs(edm_loss(precond, y, sigmas, noise, SIGMA_DATA).item() - 1) < 5 * math.sqrt(2 / len(y))


def test_loss_against_a_loop_port_of_eq_8() -> None:
    """Eq. 8 per example: ||F(c_in x; c_noise) - (y - c_skip x) / c_out||^2 with the coefficients written out in
    Python floats. The module computes eq. 2's lambda ||D - y||^2 in float32; D - y cancels where c_skip ~ 1, which
    scales float32's 6e-8 rounding by 1 / c_out (at most ~30 for these sigmas): rtol 1e-4."""
    model = tiny_edm(class_conditional=True, sigma_data=SIGMA_DATA)
    nn.init.normal_(model.denoiser.network.output[-1].weight, std=0.1)  # a non-zero F
    generator = torch.Generator().manual_seed(1)
    y = torch.rand(6, 1, 28, 28, generator=generator) * 2 - 1
    labels = torch.tensor([0, 3, 10, 7, 10, 9])  # 10: the "no label"
    sigma = torch.tensor([0.05, 0.2, 0.7, 1.5, 8.0, 60.0])
    noise = torch.randn(y.shape, generator=generator)
    with torch.no_grad():
        loss = edm_loss(lambda x, s: model.denoiser(x, s, labels), y, sigma, noise, SIGMA_DATA)
        terms = []
        for i in range(len(y)):
            s, sd = sigma[i].item(), SIGMA_DATA
            c_skip, c_out, c_in = sd**2 / (s**2 + sd**2), s * sd / math.sqrt(s**2 + sd**2), 1 / math.sqrt(s**2 + sd**2)
            x = y[i : i + 1] + s * noise[i : i + 1]
            t = torch.tensor([NOISE_EMBEDDING_SCALE * math.log(s) / 4])
            raw = model.denoiser.network(c_in * x, t, labels[i : i + 1]).double()
            terms.append(((raw - (y[i : i + 1].double() - c_skip * x.double()) / c_out) ** 2).mean())
    torch.testing.assert_close(loss.double(), torch.stack(terms).mean(), rtol=1e-4, atol=0)


def test_training_noise_levels_and_label_dropout() -> None:
    """ln(sigma) ~ N(-1.2, 1.2^2) (Table 1): over N = 100,000 draws the mean is within 5 * 1.2 / sqrt(N) = 0.019
    and the standard deviation within 5 * 1.2 / sqrt(2N) = 0.013. The model's loss drops a label with probability
    0.3: over 4,000 labels the dropped share is within 5 sqrt(0.3 * 0.7 / 4000) = 0.036 of 0.3."""
    log_sigma = draw_sigmas(100_000, -1.2, 1.2, "cpu", torch.Generator().manual_seed(0)).log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.019 and abs(log_sigma.std().item() - 1.2) < 0.013
    model = EDM(denoiser=lambda channels, classes: Recorder(), image_shape=(1, 2, 2), num_classes=10,
                class_conditional=True, label_dropout=0.3)  # fmt: skip
    labels = torch.randint(0, 10, (4000,))
    model.loss((torch.rand(4000, 1, 2, 2), labels), torch.Generator().manual_seed(0))
    seen = model.denoiser.network.calls[0][2]
    dropped = seen == 10
    assert abs(dropped.float().mean().item() - 0.3) < 0.036
    assert torch.equal(seen[~dropped], labels[~dropped])


# --- samplers (eq. 5, Algorithms 1 and 2) ------------------------------------------------------------------
def test_noise_levels_of_eq_5() -> None:
    sigmas = edm_sigmas(18, 0.002, 80.0)
    assert len(sigmas) == 19 and sigmas[-1] == 0
    assert math.isclose(sigmas[0].item(), 80.0, rel_tol=1e-12) and math.isclose(sigmas[17].item(), 0.002, rel_tol=1e-12)
    assert (sigmas[:-1].diff() < 0).all()
    # rho = 1: evenly spaced in sigma itself
    torch.testing.assert_close(edm_sigmas(5, 1.0, 3.0, rho=1)[:-1], torch.linspace(3.0, 1.0, 5, dtype=torch.float64))


def test_heun_takes_2n_minus_1_evaluations() -> None:
    calls = []
    denoise = gaussian_denoiser(0.0, 1.0)
    heun_sample(lambda x, s: calls.append(s) or denoise(x, s), torch.zeros(1), edm_sigmas(18, 0.002, 80.0))
    assert len(calls) == 35


def test_heun_follows_the_exact_ode_to_second_order() -> None:
    """For data N(mu, s^2) the probability-flow ODE is solved exactly by x(0) - mu = (x_T - mu) s / sqrt(s^2 +
    sigma_max^2). Heun's error is O(h^2): doubling the steps divides it by about 4 (Euler's by 2). No sampling
    error enters: each point is compared with its own exact solution."""
    mu, s, sigma_max = 0.3, 0.5, 80.0
    x = sigma_max * torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = mu + (x - mu) * s / math.sqrt(s**2 + sigma_max**2)
    errors = [(heun_sample(gaussian_denoiser(mu, s), x, edm_sigmas(n, 0.002, sigma_max)) - exact).abs().max()
              for n in (40, 80)]  # fmt: skip
    assert 3.2 < errors[0] / errors[1] < 4.8


@pytest.mark.parametrize("stochastic", [False, True])
def test_samplers_land_on_the_gaussian_of_the_exact_denoiser(stochastic: bool) -> None:
    """Data N(mu, s^2 I) in d = 4 dimensions, N = 20,000 samples in float64. Sampling error: the mean of each
    coordinate has standard deviation s / sqrt(N) = 0.0035, each covariance entry s^2 sqrt(2 / N) = 0.0025 (diagonal)
    or s^2 / sqrt(N) (off-diagonal); the bounds are 5 of those. 100 steps, since the truncation error must be well
    below that: Heun's variance is 0.3% high at 100 steps, 2.6% at 40, 12% at 18 (the previous test's O(h^2)).
    Starting at N(0, sigma_max^2) rather than N(mu, s^2 + sigma_max^2) biases the mean by mu s / sigma_max = 0.002."""
    mu, s, n, d = 0.3, 0.5, 20_000, 4
    generator = torch.Generator().manual_seed(0)
    x = 80.0 * torch.randn(n, d, dtype=torch.float64, generator=generator)
    sigmas = edm_sigmas(100, 0.002, 80.0)
    if stochastic:  # Algorithm 2 with the paper's ImageNet churn, over the middle of the noise levels
        out = stochastic_sample(gaussian_denoiser(mu, s), x, sigmas, 40.0, 0.05, 50.0, 1.003, generator)
    else:
        out = heun_sample(gaussian_denoiser(mu, s), x, sigmas)
    assert (out.mean(0) - mu).abs().max() < 5 * s / math.sqrt(n)
    covariance = torch.cov(out.T)
    assert (covariance.diagonal() - s**2).abs().max() < 5 * s**2 * math.sqrt(2 / n)
    assert (covariance - covariance.diagonal().diag()).abs().max() < 5 * s**2 / math.sqrt(n)


def test_ode_encode_then_decode_reconstructs() -> None:
    """encode -> decode with the exact denoiser of N(0.3, 0.5^2): the forward and reverse Heun steps cancel up to
    their truncation error, and the identity step 0 -> sigma_min shifts x by sigma_min^2 / s^2 |x - mu| ~ 1e-5."""
    denoise, sigmas = gaussian_denoiser(0.3, 0.5), edm_sigmas(18, 0.002, 80.0)
    x0 = 0.3 + 0.5 * torch.randn(256, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    latent = ode_encode(denoise, x0, sigmas)
    assert latent.std() > 10  # at sigma_max = 80 the latent is noise-sized, not the image
    assert (heun_sample(denoise, latent, sigmas) - x0).pow(2).mean() < 1e-3


# --- the model: guidance, sampling, encoding ---------------------------------------------------------------
def test_guidance_interpolates_between_null_and_conditional() -> None:
    """w = 1 is the conditional denoiser, w = 0 the null-label one, w = 2.5 null + 2.5 (conditional - null). The
    guided one runs both halves as one batch of twice the size: float32 kernels may then sum in another order,
    differences of a few ulps on outputs of order 1: atol 1e-5."""
    model = tiny_edm(class_conditional=True, sigma_data=SIGMA_DATA).eval()
    nn.init.normal_(model.denoiser.network.output[-1].weight, std=0.1)
    x, sigma, y = torch.randn(4, 1, 28, 28), torch.tensor(1.3), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        conditional, null = model.denoiser(x, sigma, y), model.denoiser(x, sigma, torch.full((4,), 10))
        assert (conditional - null).abs().max() > 1e-3  # the labels matter, so the comparisons below can fail
        torch.testing.assert_close(model.guided(y, 1.0)(x, sigma), conditional, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.guided(y, 0.0)(x, sigma), null, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.guided(y, 2.5)(x, sigma), null + 2.5 * (conditional - null), rtol=0, atol=1e-5)


def test_sample_encode_decode_shapes_and_refusals() -> None:
    model = tiny_edm(class_conditional=True).eval()
    images = model.sample(3, steps=2, guidance=2.0, label=4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    assert model.sample(2, steps=2, stochastic=True).shape == (2, 1, 28, 28)
    x = torch.rand(2, 1, 28, 28)
    latent = model.encode(x, steps=2)
    assert latent.shape == x.shape and model.decode(latent, steps=2).shape == x.shape
    with pytest.raises(ValueError, match=r"--label 10 is not a class; pass one in 0..9"):
        model.sample(1, steps=2, label=10)
    unconditional = tiny_edm()
    with pytest.raises(ValueError, match="guidance needs a class-conditional EDM"):
        unconditional.sample(1, steps=2, guidance=2.0)


def test_parse_sampler() -> None:
    assert parse_sampler("heun18") == {"steps": 18}
    assert parse_sampler("heun10w2.5") == {"steps": 10, "guidance": 2.5}
    with pytest.raises(ValueError, match="sampler 'ddim5' unknown"):
        parse_sampler("ddim5")


# --- scripts/fit.py and sample.py --------------------------------------------------------------------------
def test_fast_dev_run_through_the_cli(data_root, fit_in_process) -> None:
    result = fit_in_process("--model", "edm", "--data.root", str(data_root), "--trainer.fast_dev_run", "true",
                            "--data.batch_size", "16", *TINY_FLAGS)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "edm on FashionMNISTDataModule" in result.stdout
    assert "test/loss = " in result.stdout and "test/inversion_mse = " in result.stdout


def test_guided_samples_from_a_checkpoint(data_root, tmp_path) -> None:
    args = ("--model", "edm", "--data.root", str(data_root), "--trainer.max_steps", "2", "--data.batch_size", "16",
            "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]", *TINY_FLAGS, *QUIET)  # fmt: skip
    assert fit_in_process_at(tmp_path, *args).returncode == 0
    ckpt = tmp_path / "runs" / "edm" / "version_0" / "checkpoints" / "last.ckpt"
    out = tmp_path / "guided.png"
    result = script_in_process_at("sample", tmp_path, "--ckpt", str(ckpt), "--n", "4", "--steps", "2",
                                  "--guidance", "2", "--label", "3", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr and out.is_file()
    refused = script_in_process_at("sample", tmp_path, "--ckpt", str(ckpt), "--n", "4", "--eta", "0.5")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == ["sample.py: error: EDM.sample takes no --eta; drop it"]


def test_evaluate_scores_the_labels_of_conditional_samples(data_root, lenet_checkpoint) -> None:
    """A class-conditional EDM's evaluate gives, per sampler, the FID and the share of its samples that the
    classifier checkpoint (loaded here on its own, its logits computed directly) gives the label they were drawn
    for: 0, 1, 2, ... in order. 1,000 samples would restart the labels at 500; 12 do not reach it."""
    from datamodules.images import FashionMNISTDataModule
    from lightning_modules.checkpoint import load_model
    from lightning_modules.metrics import draw_samples

    torch.manual_seed(0)
    model = tiny_edm(class_conditional=True, inversion_steps=1).eval()
    data = FashionMNISTDataModule(root=str(data_root))
    data.setup("test")
    figures = model.evaluate(data, samplers="heun2,heun2w3", fid_classifier=str(lenet_checkpoint), samples=12)
    assert {"fid_heun2", "fid_heun2w3", "label_acc_heun2", "label_acc_heun2w3", "inversion_mse"} == set(figures)
    classifier = load_model(lenet_checkpoint).eval()
    for spec, guidance in (("heun2", 1.0), ("heun2w3", 3.0)):
        drawn = draw_samples(model, 12, {"steps": 2, "guidance": guidance}, seed=0)
        with torch.no_grad():
            predicted = classifier(drawn).argmax(1)
        assert figures[f"label_acc_{spec}"] == (predicted == torch.arange(12) % 10).double().mean().item()
    unconditional = tiny_edm(class_conditional=False, inversion_steps=1).eval()
    assert "label_acc_heun2" not in unconditional.evaluate(
        data, samplers="heun2", fid_classifier=str(lenet_checkpoint), samples=4
    )


def test_a_label_classifier_labels_the_samples_and_the_fid_keeps_its_own(data_root, lenet_checkpoint, tmp_path) -> None:
    """--label_classifier: the label share comes from that checkpoint (here a LeNet-5 of other weights, whose
    predictions on these samples differ from the FID classifier's), the FID from --fid_classifier unchanged."""
    import lightning as L

    from datamodules.images import FashionMNISTDataModule
    from lightning_modules.checkpoint import load_model
    from lightning_modules.metrics import draw_samples

    other = load_model(lenet_checkpoint)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    other.hparams["_class_path"] = "lightning_modules.classifiers.classifier.ImageClassifier"  # as fit.py saves
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(other)
    trainer.save_checkpoint(tmp_path / "other.ckpt")
    torch.manual_seed(0)
    model = tiny_edm(class_conditional=True, inversion_steps=1).eval()
    data = FashionMNISTDataModule(root=str(data_root))
    data.setup("test")
    options = {"samplers": "heun2", "fid_classifier": str(lenet_checkpoint), "samples": 40}
    own = model.evaluate(data, **options)
    labelled = model.evaluate(data, **options, label_classifier=str(tmp_path / "other.ckpt"))
    drawn = draw_samples(model, 40, {"steps": 2}, seed=0)
    with torch.no_grad():
        predicted = load_model(tmp_path / "other.ckpt").eval()(drawn).argmax(1)
        first = load_model(lenet_checkpoint).eval()(drawn).argmax(1)
    assert not torch.equal(predicted, first)  # the two classifiers disagree, so the test tells them apart
    assert labelled["label_acc_heun2"] == (predicted == torch.arange(40) % 10).double().mean().item()
    assert labelled["fid_heun2"] == own["fid_heun2"]
    with pytest.raises(ValueError, match="--label_classifier scores the labels .* pass --fid_classifier too"):
        model.evaluate(data, samplers="heun2", samples=4, label_classifier=str(tmp_path / "other.ckpt"))
