"""NCSN: the denoising score matching loss against its closed form for Gaussian data, the geometric levels, annealed
against plain Langevin dynamics with the exact score of the 0.8 / 0.2 mixture (Song & Ermon 2019, Fig. 3), the
model's noise-level input, and scripts/fit.py with both configs."""

import math
from functools import partial

import pytest
import torch

from datamodules.toy2d import TWO_GAUSSIANS_MEANS, TWO_GAUSSIANS_STD, TWO_GAUSSIANS_WEIGHTS, Toy2DDataModule
from lightning_modules.blocks.mlp_denoiser import MLPDenoiser
from lightning_modules.blocks.unet import UNet
from lightning_modules.diffusion.langevin import annealed_langevin, geometric_sigmas, langevin
from lightning_modules.diffusion.ncsn import NCSN, TIME_SCALE, dsm_loss, parse_sampler
from lightning_modules.registry import read_config

TOY = read_config("ncsn_toy")["model"]["init_args"]
MEANS = torch.tensor(TWO_GAUSSIANS_MEANS, dtype=torch.float64)
WEIGHTS = torch.tensor(TWO_GAUSSIANS_WEIGHTS, dtype=torch.float64)


def test_dsm_loss_equals_its_closed_form_for_gaussian_data_and_the_exact_score() -> None:
    """Data x ~ N(mu, s^2 I) in d dimensions, x~ = x + sigma z: q_sigma = N(mu, (s^2 + sigma^2) I), whose score is
    -(x~ - mu) / (s^2 + sigma^2). With x = mu + s u, s(x~) + z / sigma = s (s z - sigma u) / (sigma (s^2 + sigma^2)),
    and s z - sigma u ~ N(0, (s^2 + sigma^2) I), so 1/2 sigma^2 ||s(x~) + z / sigma||^2 = r / 2 * chi2_d with
    r = s^2 / (s^2 + sigma^2): its mean is d r / 2, its variance (r / 2)^2 2d."""
    n, d, s, mu = 400_000, 3, 0.7, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    sigma = geometric_sigmas(5.0, 0.05, 6)[torch.randint(0, 6, (n,), generator=generator)]
    u, z = (
        torch.randn(n, d, generator=generator, dtype=torch.float64),
        torch.randn(n, d, generator=generator, dtype=torch.float64),
    )
    perturbed = mu + s * u + sigma[:, None] * z
    exact_score = -(perturbed - mu) / (s**2 + sigma[:, None] ** 2)
    r = s**2 / (s**2 + sigma**2)
    expected = (d * r / 2).mean()
    # Monte Carlo: the standard error of the mean of n independent r_i / 2 chi2_d terms; 5 of them (the float64
    # rounding, ~1e-16 per term, is far below).
    standard_error = ((r / 2) ** 2 * 2 * d).sum().sqrt() / n
    loss = dsm_loss(exact_score, z, sigma)
    assert abs(loss - expected) < 5 * standard_error


def test_geometric_sigmas() -> None:
    sigmas = geometric_sigmas(20.0, 1.0, 10)
    assert sigmas.shape == (10,) and sigmas.dtype == torch.float64
    # float64 powers and logarithms: relative rounding ~1e-15, checked to 1e-12.
    torch.testing.assert_close(sigmas[[0, -1]], torch.tensor([20.0, 1.0], dtype=torch.float64), rtol=1e-12, atol=0)
    ratios = sigmas[:-1] / sigmas[1:]
    torch.testing.assert_close(ratios, torch.full((9,), 20.0 ** (1 / 9), dtype=torch.float64), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="sigma_1 >= sigma_L > 0"):
        geometric_sigmas(0.1, 1.0, 10)


def mixture_score(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact score of the two-Gaussian mixture convolved with N(0, sigma^2 I): each component becomes
    N(mu_k, v I) with v = std^2 + sigma^2, and grad log sum_k w_k N(x; mu_k, v I) = sum_k r_k(x) (mu_k - x) / v,
    r_k the posterior probability of component k (a softmax of log w_k - ||x - mu_k||^2 / 2v)."""
    v = TWO_GAUSSIANS_STD**2 + sigma**2
    offsets = MEANS[None] - x[:, None]  # (n, 2 components, 2)
    responsibilities = torch.softmax(WEIGHTS.log() - offsets.pow(2).sum(-1) / (2 * v), dim=1)
    return (responsibilities[..., None] * offsets).sum(1) / v


def major_fraction(x: torch.Tensor) -> float:
    """The share of samples nearer the weight-0.8 mean than the weight-0.2 one."""
    return ((x - MEANS[0]).norm(dim=1) < (x - MEANS[1]).norm(dim=1)).double().mean().item()


N_SAMPLES = 4_000
# The sampled share of a mode of weight 0.8 has standard error sqrt(0.8 * 0.2 / 4,000) = 0.0063: the tolerance
# 0.05 is 8 of them, room for the sampler's own bias (finite steps) but not for a wrong weight.
WEIGHT_TOLERANCE = 0.05


def uniform_start() -> torch.Tensor:
    """x_0 as NCSN.initial draws it for points: uniform over [-sigma_1, sigma_1]^2."""
    generator = torch.Generator().manual_seed(1)
    return (torch.rand(N_SAMPLES, 2, generator=generator, dtype=torch.float64) * 2 - 1) * TOY["sigma_max"]


def test_annealed_langevin_recovers_the_mixture_weights_and_plain_langevin_does_not() -> None:
    """With the exact score and the toy config's levels and steps, annealed Langevin dynamics draws the modes in
    their 0.8 / 0.2 proportion; plain Langevin at sigma_L, with as many steps of the same size as the last level
    takes, leaves each sample in the mode whose basin it started in: about half and half from a symmetric start
    (Song & Ermon 2019, sec. 3.2.2 and Fig. 3)."""
    sigmas = geometric_sigmas(TOY["sigma_max"], TOY["sigma_min"], TOY["num_levels"])
    steps, epsilon = TOY["steps_per_level"], TOY["epsilon"]
    annealed = annealed_langevin(
        mixture_score, uniform_start(), sigmas, steps, epsilon, torch.Generator().manual_seed(2)
    )
    assert abs(major_fraction(annealed) - WEIGHTS[0].item()) < WEIGHT_TOLERANCE
    # Near each mean the samples have the data's spread, std^2 + sigma_L^2 per coordinate (the dynamics mixed
    # locally): the 3,200 or so samples there estimate a standard deviation to ~1.3%, checked to 10%.
    near = annealed[(annealed - MEANS[0]).norm(dim=1) < 4 * TWO_GAUSSIANS_STD]
    expected_std = math.sqrt(TWO_GAUSSIANS_STD**2 + TOY["sigma_min"] ** 2)
    torch.testing.assert_close(near.std(0), torch.full((2,), expected_std, dtype=torch.float64), rtol=0.1, atol=0)
    plain = langevin(
        mixture_score,
        uniform_start(),
        sigmas[-1].item(),
        len(sigmas) * steps,
        epsilon,
        torch.Generator().manual_seed(2),
    )
    assert abs(major_fraction(plain) - WEIGHTS[0].item()) > 3 * WEIGHT_TOLERANCE


def test_the_noise_level_input_spans_the_time_range_in_log_sigma() -> None:
    model = NCSN(image_shape=None, data_dim=2, sigma_max=10.0, sigma_min=0.1, num_levels=5)
    # Level i of L at i * TIME_SCALE / (L - 1); float32 logarithms: ~1e-7 relative, checked to 1e-4 of the range.
    expected = torch.arange(5, dtype=torch.float32) * TIME_SCALE / 4
    torch.testing.assert_close(model.level_time(model.sigmas), expected, rtol=0, atol=TIME_SCALE * 1e-4)
    assert model.level_time(torch.tensor([1.0])).item() == pytest.approx(TIME_SCALE / 2, rel=1e-5)


@pytest.mark.parametrize("sampler", ["annealed", "plain"])
def test_sample_shapes_and_ranges(sampler: str) -> None:
    torch.manual_seed(0)
    points = NCSN(image_shape=None, data_dim=2, num_levels=3, steps_per_level=2).eval()
    assert points.sample(5, sampler=sampler).shape == (5, 2)
    images = NCSN(
        denoiser=partial(UNet, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), num_heads=2),
        num_levels=2,
        steps_per_level=1,
    ).eval()
    x = images.sample(2, sampler=sampler)
    assert x.shape == (2, 1, 28, 28) and x.min() >= 0 and x.max() <= 1


def test_bad_levels_and_networks_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"--model.sigma_min \(2.0\) is above --model.sigma_max \(1.0\)"):
        NCSN(image_shape=None, data_dim=2, sigma_max=1.0, sigma_min=2.0)
    with pytest.raises(ValueError, match="MLPDenoiser models points"):
        NCSN(denoiser=MLPDenoiser)


TINY_UNET = [
    "--model.denoiser.base_channels", "8", "--model.denoiser.channel_mults", "[1, 2]",
    "--model.denoiser.attention_levels", "[1]", "--model.denoiser.num_heads", "2",
]  # fmt: skip
FEW_STEPS = ["--model.num_levels", "3", "--model.steps_per_level", "2"]


@pytest.mark.parametrize("name", ["ncsn_toy", "ncsn"])
def test_fast_dev_run(name: str, data_root, fit_in_process) -> None:
    # Toy points are generated (no root); the images come from the tiny MNIST in its real format.
    extra = FEW_STEPS if name == "ncsn_toy" else [*TINY_UNET, *FEW_STEPS, "--data.root", str(data_root)]
    result = fit_in_process("--model", name, "--trainer.fast_dev_run", "true", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{name} on " in result.stdout and "test/loss = " in result.stdout


def test_evaluate_counts_the_mode_shares_of_each_sampler() -> None:
    """evaluate() on the two-Gaussian toy, with the network's score swapped for the exact one, reports for each
    sampler the share of its seeded samples that major_fraction counts in the weight-0.8 mode (few steps here:
    that the samplers recover the weights with the config's steps is the test above)."""
    model = NCSN(image_shape=None, data_dim=2, **{k: v for k, v in TOY.items() if k != "denoiser"})
    model.score = lambda x, sigma: mixture_score(x.double(), float(sigma)).to(x.dtype)
    data = Toy2DDataModule(name="two_gaussians")
    figures = model.evaluate(data, samplers="annealed2, plain40", samples=300, seed=3)
    expected = {}
    for name, sampler, steps in (("annealed2", "annealed", 2), ("plain40", "plain", 40)):
        torch.manual_seed(3)  # draw_samples seeds the global stream with the seed
        expected[f"major_mode_share_{name}"] = major_fraction(model.sample(300, sampler=sampler, steps=steps).double())
    assert figures == expected
    assert model.evaluate(Toy2DDataModule(name="moons"), samples=10) == {}  # no modes to count
    with pytest.raises(ValueError, match="sampler 'langevin' unknown; write annealed, plain"):
        model.evaluate(data, samplers="langevin")


def test_sampler_names() -> None:
    assert parse_sampler("annealed") == {"sampler": "annealed"}
    assert parse_sampler("annealed5") == {"sampler": "annealed", "steps": 5}
    assert parse_sampler("plain400") == {"sampler": "plain", "steps": 400}
    for bad in ("plain0", "heun18", "annealed-1"):
        with pytest.raises(ValueError, match="unknown"):
            parse_sampler(bad)
