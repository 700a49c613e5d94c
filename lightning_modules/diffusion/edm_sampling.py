"""The EDM samplers of Karras et al. 2022, apart from any model: the noise levels of eq. 5, the deterministic Heun
sampler (Algorithm 1), the stochastic one (Algorithm 2) and the probability-flow ODE run backwards from an image to
its noise (the encoder). Each takes `denoise(x, sigma) -> D(x; sigma)`, the denoiser at noise level sigma (a 0-dim
tensor), so the ODE of eq. 4 with sigma(t) = t reads dx/dsigma = (x - D(x; sigma)) / sigma."""

import math
from collections.abc import Callable

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor], Tensor]


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The N = `steps` noise levels of eq. 5, sigma_max down to sigma_min evenly in sigma^(1/rho), then the final
    sigma_N = 0: (steps + 1,) float64. rho = 7 shortens the steps near sigma_min (Table 1)."""
    if steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"EDM sampling needs steps >= 1 and 0 < sigma_min < sigma_max, got {steps}, {sigma_min}, "
                         f"{sigma_max}")  # fmt: skip
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    high, low = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)])


def heun_step(denoise: Denoise, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One step of Algorithm 1 (lines 4-8) from sigma to sigma_next: Euler, then the 2nd-order (trapezoidal)
    correction unless sigma_next is 0, where the derivative (x - D) / sigma is undefined."""
    derivative = (x - denoise(x, sigma)) / sigma
    x_next = x + (sigma_next - sigma) * derivative
    if sigma_next == 0:
        return x_next
    derivative_next = (x_next - denoise(x_next, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * (derivative + derivative_next) / 2


def heun_sample(denoise: Denoise, x: Tensor, sigmas: Tensor) -> Tensor:
    """Algorithm 1: x (noise of standard deviation sigmas[0]) integrated along the probability-flow ODE down the
    `sigmas` of `edm_sigmas`. N steps cost 2N - 1 denoiser evaluations (18 steps: 35)."""
    sigmas = sigmas.to(x.device, x.dtype)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = heun_step(denoise, x, sigma, sigma_next)
    return x


def stochastic_sample(
    denoise: Denoise,
    x: Tensor,
    sigmas: Tensor,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Algorithm 2: before each Heun step within [s_tmin, s_tmax], raise the noise level by gamma = min(s_churn / N,
    sqrt(2) - 1) (lines 4-6), adding fresh noise of standard deviation s_noise sqrt(sigma_hat^2 - sigma^2); with
    s_churn = 0 it is Algorithm 1."""
    sigmas = sigmas.to(x.device, x.dtype)
    steps = len(sigmas) - 1
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        gamma = min(s_churn / steps, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            eps = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + s_noise * (sigma_hat**2 - sigma**2).sqrt() * eps
        x = heun_step(denoise, x, sigma_hat, sigma_next)
    return x


def ode_encode(denoise: Denoise, x0: Tensor, sigmas: Tensor) -> Tensor:
    """The probability-flow ODE (eq. 4) from an image x0 up to sigmas[0] = sigma_max, through the same levels as
    `heun_sample` in reverse, so that heun_sample(ode_encode(x0)) returns x0 up to the steps' truncation error.
    The first level, 0 -> sigma_min, is taken as the identity: the sampler's last step there is the Euler step
    x0 = D(x; sigma_min), and at sigma_min (0.002, a quarter of a grey level in [-1, 1]) D(x) = x to that size."""
    ascending = sigmas.to(x0.device, x0.dtype).flip(0)[1:]  # sigma_min, ..., sigma_max
    x = x0
    for sigma, sigma_next in zip(ascending[:-1], ascending[1:], strict=True):
        x = heun_step(denoise, x, sigma, sigma_next)
    return x
