"""The mathematics of denoising diffusion, independent of any network: the noise schedule and forward process
(Ho et al. 2020), the ancestral DDPM sampler, DDIM sampling and inversion (Song et al. 2021) and inpainting
(the replacement method and RePaint's resampling, Lugmayr et al. 2022).

Every sampler takes `eps_fn(x_t, t) -> predicted noise`, where `t` is a (B,) long tensor of timesteps in
[0, T), so the same code runs a U-Net, an MLP or an analytic denoiser (the tests use one).
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_betas(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. 2020, sec. 4: beta_t linear from 1e-4 to 0.02 over T = 1000 steps (rescaled for other T)."""
    scale = 1000 / timesteps
    return torch.linspace(scale * beta_start, scale * beta_end, timesteps, dtype=torch.float64)


def cosine_betas(timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha-bar(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2);
    betas clipped at 0.999 so that the last steps do not divide by zero."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


class NoiseSchedule(nn.Module):
    """beta_t and the quantities derived from it, as buffers (they follow the model to its device)."""

    def __init__(self, kind: Literal["linear", "cosine"] = "linear", timesteps: int = 1000) -> None:
        """
        Args:
            kind: "linear" (Ho et al.) or "cosine" (Nichol & Dhariwal).
            timesteps: T, the number of diffusion steps.
        """
        super().__init__()
        if kind not in ("linear", "cosine"):
            raise ValueError(f"noise schedule {kind!r} unknown; choose linear or cosine")
        if timesteps < 2:
            raise ValueError(f"the diffusion needs at least 2 timesteps, got {timesteps}")
        betas = linear_betas(timesteps) if kind == "linear" else cosine_betas(timesteps)
        alpha_bar = torch.cumprod(1 - betas, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.timesteps = timesteps
        # Computed in float64, stored in float32: the products over 1000 steps lose precision otherwise.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)
        # beta-tilde, eq. 7: the variance of the true posterior q(x_{t-1} | x_t, x_0).
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        self.register_buffer("posterior_variance", posterior_variance.float(), persistent=False)

    def level(self, t: int) -> torch.Tensor:
        """alpha-bar_t of one timestep, with alpha-bar_{-1} = 1: the clean data, where every sampler ends."""
        return self.alpha_bar[t] if t >= 0 else self.alpha_bar.new_ones(())

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) in closed form, eq. 4: sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps."""
        a = broadcast(self.alpha_bar[t], x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample values shaped (B, 1, 1, ...) to multiply a batch like `like`."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def timestep_pairs(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """(t, t_prev) of each step of a `steps`-step DDIM run, from the noise down: the timesteps are evenly
    spaced over [0, T - 1] (Song et al. 2021, sec. 4.2), all of them when steps = T, and the last step goes to
    t_prev = -1, the data."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be between 1 and T = {timesteps}, got {steps}")
    sequence = torch.linspace(0, timesteps - 1, steps).round().long().tolist()
    return list(zip(sequence[::-1], [*sequence[-2::-1], -1], strict=True))


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Eq. 4 solved for x_0, given the predicted noise."""
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def batch_timestep(t: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def clipped_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The noise implied by x_t and the predicted x_0 clipped to the data range [-1, 1] (the `clip_denoised` of
    Ho et al.'s and Song et al.'s code): a step then never aims outside the images' range."""
    x0 = predict_x0(x_t, eps, alpha_bar).clamp(-1, 1)
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


@torch.no_grad()
def ddpm_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """Ancestral sampling, Ho et al. 2020, algorithm 2, from x_T down through all T steps, with the posterior
    variance beta-tilde_t (eq. 7) as sigma_t^2. No noise is added at the last step."""
    for t in reversed(range(schedule.timesteps)):
        eps = eps_fn(x_t, batch_timestep(t, x_t))
        if clip_x0:
            eps = clipped_eps(x_t, eps, schedule.alpha_bar[t])
        alpha, beta = 1 - schedule.betas[t], schedule.betas[t]
        mean = (x_t - beta / (1 - schedule.alpha_bar[t]).sqrt() * eps) / alpha.sqrt()
        if t > 0:
            mean = mean + schedule.posterior_variance[t].sqrt() * draw(x_t, generator)
        x_t = mean
    return x_t


def ddim_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    alpha_bar: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    eta: float,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """One step of Song et al. 2021, eq. 12, from x_t to x_{t'} (t' < t); sigma from eq. 16 scaled by eta.
    eta = 0 is the deterministic DDIM; eta = 1 with every timestep is DDPM with sigma^2 = beta-tilde."""
    if clip_x0:
        eps = clipped_eps(x_t, eps, alpha_bar)
    x0 = predict_x0(x_t, eps, alpha_bar)
    if eta == 0:  # also where alpha-bar_t = 1 (inversion's first step), at which eq. 16 is 0/0
        return alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev).sqrt() * eps
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    x_prev = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
    # No draw when sigma is 0 (the step onto the data), so that DDPM and DDIM consume the same noise.
    return x_prev + sigma * draw(x_t, generator) if float(sigma) > 0 else x_prev


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    x_t: torch.Tensor,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
) -> torch.Tensor:
    """DDIM generation (Song et al. 2021, eq. 12) from x_T through `steps` evenly spaced timesteps."""
    for t, t_prev in timestep_pairs(schedule.timesteps, steps):
        alpha_bar, alpha_bar_prev = schedule.level(t), schedule.level(t_prev)
        eps = eps_fn(x_t, batch_timestep(t, x_t))
        x_t = ddim_step(x_t, eps, alpha_bar, alpha_bar_prev, eta, generator, clip_x0)
    return x_t


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, schedule: NoiseSchedule, x0: torch.Tensor, steps: int, refine: int = 0) -> torch.Tensor:
    """DDIM inversion: the deterministic ODE of eq. 12 (eta = 0) run forward, from the data x_0 to its noise
    latent x_T (Song et al. 2021, sec. 4.3 and eq. 14). Each step evaluates the noise at the current point and
    the timestep it moves to, so ddim_sample with the same steps maps the latent back up to the discretisation.
    `refine` > 0 solves each step for the point whose own noise estimate leads back exactly (fixed-point
    iterations, Pan et al. 2023), which removes most of that error at refine more evaluations per step."""
    x = x0
    for t, t_prev in reversed(timestep_pairs(schedule.timesteps, steps)):
        alpha_bar, alpha_bar_prev = schedule.level(t), schedule.level(t_prev)
        step = batch_timestep(t, x)
        x_next = ddim_step(x, eps_fn(x, step), alpha_bar_prev, alpha_bar, eta=0.0)
        for _ in range(refine):
            x_next = ddim_step(x, eps_fn(x_next, step), alpha_bar_prev, alpha_bar, eta=0.0)
        x = x_next
    return x


@torch.no_grad()
def inpaint(
    eps_fn: EpsFn,
    schedule: NoiseSchedule,
    known: torch.Tensor,
    mask: torch.Tensor,
    steps: int,
    eta: float = 1.0,
    resample: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fill the pixels where `mask` is 0, keeping those where it is 1 (`known`, in the model's range).

    The replacement method (Song et al. 2021 SDE, app. I; Lugmayr et al. 2022, eq. 8): after every reverse step
    the known pixels are replaced by the known image noised to the same level, so the model only ever
    generates the unknown ones in context. `resample` > 1 is RePaint's resampling (Lugmayr et al. 2022,
    algorithm 1): each step is undone by re-noising (eq. 1 between the two levels) and redone, resample times,
    which harmonises the two regions. The steps follow DDIM's sequence (eta = 1 with steps = T is ancestral
    DDPM); the result holds `known` exactly where the mask is 1."""
    mask = mask.to(known.dtype).expand_as(known)
    x_t = draw(known, generator)
    for t, t_prev in timestep_pairs(schedule.timesteps, steps):
        alpha_bar, alpha_bar_prev = schedule.level(t), schedule.level(t_prev)
        for round_ in range(resample):
            eps = eps_fn(x_t, batch_timestep(t, x_t))
            unknown_part = ddim_step(x_t, eps, alpha_bar, alpha_bar_prev, eta, generator)
            known_part = alpha_bar_prev.sqrt() * known + (1 - alpha_bar_prev).sqrt() * draw(known, generator)
            x_prev = mask * known_part + (1 - mask) * unknown_part
            if round_ == resample - 1 or t_prev < 0:
                break
            # Back up from t_prev to t: q(x_t | x_t_prev) with alpha = alpha-bar_t / alpha-bar_t_prev.
            alpha = alpha_bar / alpha_bar_prev
            x_t = alpha.sqrt() * x_prev + (1 - alpha).sqrt() * draw(known, generator)
        x_t = x_prev
    return x_t


def draw(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `like`, from `generator` (the global one when None)."""
    return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def v_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The velocity v = sqrt(alpha-bar) eps - sqrt(1 - alpha-bar) x_0 (Salimans & Ho 2022, sec. 4)."""
    a = broadcast(alpha_bar, x0)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The noise implied by a predicted velocity: eps = sqrt(alpha-bar) v + sqrt(1 - alpha-bar) x_t."""
    a = broadcast(alpha_bar, x_t)
    return a.sqrt() * v + (1 - a).sqrt() * x_t


def denoising_loss(
    prediction: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    alpha_bar: torch.Tensor,
    target: Literal["eps", "v"] = "eps",
) -> torch.Tensor:
    """Ho et al. 2020, eq. 14, L_simple = E ||eps - eps_theta(x_t, t)||^2 (mean over pixels), or the same
    regression onto v for v-prediction. Zero exactly when the network predicts its target."""
    wanted = noise if target == "eps" else v_target(x0, noise, alpha_bar)
    return torch.nn.functional.mse_loss(prediction, wanted)
