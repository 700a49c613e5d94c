"""The diffusion mathematics of lightning_modules/diffusion/gaussian_diffusion.py against independent computations, with analytic
denoisers instead of networks: for Gaussian data N(mu, s^2) the optimal noise prediction is known in closed
form, so samplers and inversion can be checked without training anything."""

import pytest
import torch

from lightning_modules.diffusion.gaussian_diffusion import (
    NoiseSchedule,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    denoising_loss,
    eps_from_v,
    inpaint,
    timestep_pairs,
    v_target,
)
from lightning_modules.masks import box_mask, grid_mask, random_pixel_mask

MU, S = 0.3, 0.5


def gaussian_eps(schedule: NoiseSchedule, mu: float = MU, s: float = S):
    """E[eps | x_t] for data x_0 ~ N(mu, s^2) per pixel: x_t = sqrt(a) x_0 + sqrt(1 - a) eps is jointly Gaussian
    with eps, so E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a)."""

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = schedule.alpha_bar[t].reshape(-1, *([1] * (x_t.dim() - 1))).double()
        return ((1 - a).sqrt() * (x_t - a.sqrt() * mu) / (a * s**2 + 1 - a)).to(x_t.dtype)

    return eps_fn


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_closed_form_matches_iterating_the_forward_process(kind: str) -> None:
    schedule = NoiseSchedule(kind, timesteps=1000)
    betas = schedule.betas.double()
    # Mean and variance of x_t given x_0, by iterating x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) z.
    scale, variance = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t in range(1000):
        scale = (1 - betas[t]).sqrt() * scale
        variance = (1 - betas[t]) * variance + betas[t]
        if t in (0, 10, 250, 999):
            assert torch.allclose(scale**2, schedule.alpha_bar[t].double(), rtol=1e-4, atol=1e-7)
            assert torch.allclose(variance, 1 - schedule.alpha_bar[t].double(), rtol=1e-4, atol=1e-7)
    # And by simulation: 20,000 chains from the same x_0 against q_sample's draws.
    generator = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.4]).expand(20_000, 2)
    x = x0.clone()
    for t in range(300):
        x = (1 - schedule.betas[t]).sqrt() * x + schedule.betas[t].sqrt() * torch.randn(x.shape, generator=generator)
    t = torch.full((20_000,), 299)
    direct = schedule.q_sample(x0, t, torch.randn(x0.shape, generator=generator))
    assert torch.allclose(x.mean(0), direct.mean(0), atol=0.03)
    assert torch.allclose(x.std(0), direct.std(0), atol=0.03)


def test_schedules_are_the_papers() -> None:
    linear = NoiseSchedule("linear", 1000)
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    cosine = NoiseSchedule("cosine", 1000)
    # Nichol & Dhariwal's alpha-bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2) / f(0), checked at t = T/2.
    s = 0.008
    f = lambda u: torch.cos(torch.tensor((u + s) / (1 + s) * torch.pi / 2, dtype=torch.float64)) ** 2  # noqa: E731
    assert cosine.alpha_bar[499].item() == pytest.approx((f(500 / 1000) / f(0)).item(), rel=1e-4)
    assert (cosine.betas <= 0.999).all() and (cosine.betas > 0).all()
    with pytest.raises(ValueError, match="linear or cosine"):
        NoiseSchedule("quadratic")


def test_loss_is_zero_for_the_exact_noise_and_positive_otherwise() -> None:
    schedule = NoiseSchedule("linear", 1000)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    alpha_bar = schedule.alpha_bar[t]
    assert denoising_loss(noise, x0, noise, alpha_bar, "eps").item() == 0.0
    v = v_target(x0, noise, alpha_bar)
    assert denoising_loss(v, x0, noise, alpha_bar, "v").item() == 0.0
    assert denoising_loss(torch.zeros_like(noise), x0, noise, alpha_bar).item() == pytest.approx(
        noise.pow(2).mean().item()
    )
    # A perfect v-prediction implies the true noise.
    x_t = schedule.q_sample(x0, t, noise)
    assert torch.allclose(eps_from_v(x_t, v, alpha_bar), noise, atol=1e-5)


def test_ddim_with_eta_one_and_every_step_is_ancestral_ddpm() -> None:
    schedule = NoiseSchedule("linear", 1000)
    eps_fn = gaussian_eps(schedule)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    ddpm = ddpm_sample(eps_fn, schedule, x_T, generator=torch.Generator().manual_seed(7))
    ddim = ddim_sample(eps_fn, schedule, x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(ddpm, ddim, atol=1e-4)
    # Also with each step's predicted x_0 clipped to [-1, 1] (and the noise it implies).
    clipped = ddpm_sample(eps_fn, schedule, x_T * 3, torch.Generator().manual_seed(7), clip_x0=True)
    clipped_ddim = ddim_sample(eps_fn, schedule, x_T * 3, 1000, 1.0, torch.Generator().manual_seed(7), clip_x0=True)
    assert torch.allclose(clipped, clipped_ddim, atol=1e-4)
    # A different seed gives a different sample: the noise draws are really used.
    other = ddim_sample(eps_fn, schedule, x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert not torch.allclose(ddpm, other, atol=1e-2)


def test_samplers_reach_the_data_distribution() -> None:
    schedule = NoiseSchedule("linear", 1000)
    eps_fn = gaussian_eps(schedule)
    x_T = torch.randn(4000, 1, generator=torch.Generator().manual_seed(2))
    # Few steps shrink the variance (the discretisation error, largest for stochastic steps): check the
    # ancestral sampler and a fine deterministic one.
    for sample in (
        ddpm_sample(eps_fn, schedule, x_T, generator=torch.Generator().manual_seed(3)),
        ddim_sample(eps_fn, schedule, x_T, steps=500),
    ):
        assert sample.mean().item() == pytest.approx(MU, abs=0.03)
        assert sample.std().item() == pytest.approx(S, abs=0.03)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_inversion_then_generation_reconstructs(kind: str) -> None:
    schedule = NoiseSchedule(kind, 1000)
    eps_fn = gaussian_eps(schedule)
    x0 = MU + S * torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(4))
    latent = ddim_invert(eps_fn, schedule, x0, steps=100)
    # The latent is noise-like (unit variance), not the image.
    assert latent.std().item() == pytest.approx(1.0, abs=0.2)
    back = ddim_sample(eps_fn, schedule, latent, steps=100)
    # In [0, 1] pixel units, as the model reports it: half the [-1, 1] error.
    assert ((back - x0) / 2).pow(2).mean().item() < 1e-3


@pytest.mark.parametrize("resample", [1, 3])
@pytest.mark.parametrize("mask_kind", ["box", "random", "grid"])
def test_inpainting_keeps_the_known_pixels(mask_kind: str, resample: int) -> None:
    schedule = NoiseSchedule("linear", 1000)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = {
        "box": box_mask(known.shape),
        "random": random_pixel_mask(known.shape, 0.3, torch.Generator().manual_seed(0)),
        "grid": grid_mask(known.shape),
    }[mask_kind]
    out = inpaint(gaussian_eps(schedule), schedule, known, mask, steps=20, resample=resample)
    keep = mask.expand_as(known).bool()
    assert torch.equal(out[keep], known[keep])
    assert not torch.allclose(out[~keep], known[~keep])


def test_masks() -> None:
    grid = grid_mask((1, 1, 4, 4))
    assert grid[0, 0].tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    box = box_mask((1, 1, 8, 8), 0.5)
    assert box.sum().item() == 64 - 16 and box[0, 0, 2:6, 2:6].sum().item() == 0
    assert random_pixel_mask((100, 1, 28, 28), 0.25).mean().item() == pytest.approx(0.25, abs=0.01)


def test_timestep_pairs() -> None:
    assert timestep_pairs(1000, 1000)[0] == (999, 998) and timestep_pairs(1000, 1000)[-1] == (0, -1)
    pairs = timestep_pairs(1000, 5)
    assert pairs == [(999, 749), (749, 500), (500, 250), (250, 0), (0, -1)]
    with pytest.raises(ValueError, match="between 1 and T"):
        timestep_pairs(1000, 0)


def test_refined_inversion_is_closer_to_exact() -> None:
    """Fixed-point refinement makes each inversion step the exact inverse of the generation step."""
    schedule = NoiseSchedule("linear", 1000)
    eps_fn = gaussian_eps(schedule, s=0.2)
    x0 = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(5)) * 2 - 1  # not from the model's data
    errors = [
        (ddim_sample(eps_fn, schedule, ddim_invert(eps_fn, schedule, x0, 20, refine), 20) - x0).pow(2).mean().item()
        for refine in (0, 3)
    ]
    assert errors[1] < errors[0] / 100


def test_strided_ddim_with_eta_between_0_and_1_against_the_paper(monkeypatch: pytest.MonkeyPatch) -> None:
    """DDIM with eta = 0.5 on 10 of T = 100 steps, against Song et al. 2021, eq. 12 with sigma from eq. 16, written
    out here from alpha-bar alone, both fed the same fixed sequence of noise images."""
    import lightning_modules.diffusion.gaussian_diffusion as diffusion

    T, eta = 100, 0.5
    schedule = NoiseSchedule("linear", T)
    eps_fn = gaussian_eps(schedule)
    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noises = list(torch.randn(9, 3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    supplied = iter(noises)
    monkeypatch.setattr(diffusion, "draw", lambda like, generator: next(supplied))
    sampled = ddim_sample(eps_fn, schedule, x_T, steps=10, eta=eta)
    assert next(supplied, None) is None  # one noise image per step but the last, where sigma = 0

    # Ho et al.'s linear betas for T = 1000 (1e-4 to 0.02) rescaled by 1000 / T, in float64.
    alpha_bar = torch.cumprod(1 - torch.linspace(1e-3, 0.2, T, dtype=torch.float64), 0)
    timesteps = [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]  # round(linspace(0, T - 1, 10)), from the noise down
    x = x_T
    for i, t in enumerate(timesteps):
        a = alpha_bar[t]
        a_prev = alpha_bar[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0, dtype=torch.float64)
        eps = (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)  # the same analytic denoiser
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()  # eq. 12, "predicted x_0"
        sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()  # eq. 16
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps  # eq. 12, "direction pointing to x_t"
        if i + 1 < len(timesteps):
            x = x + sigma * noises[i]  # eq. 12, "random noise"
    # The sampler computes in float64 too, but with alpha-bar rounded to float32 (relative 6e-8). An error of
    # that size in alpha-bar moves x_0 = (x - sqrt(1 - a) eps) / sqrt(a) by at most ~6e-8 / sqrt(a) relative
    # (1 / sqrt(a) <= 12 here, alpha-bar_99 = 0.0064), and 10 steps add these up: below 1e-5 on values of order 1.
    torch.testing.assert_close(sampled, x, rtol=0, atol=1e-5)
    # The noise matters at this eta: the deterministic sampler (eta 0) lands elsewhere.
    assert (ddim_sample(eps_fn, schedule, x_T, steps=10, eta=0.0) - x).abs().max() > 1e-2
