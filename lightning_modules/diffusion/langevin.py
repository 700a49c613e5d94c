"""Langevin dynamics for score-based models (Song & Ermon 2019): the geometric noise levels, plain Langevin at one
noise level and annealed Langevin dynamics (Algorithm 1). Apart from any network: `score(x, sigma)` is any
function returning s(x, sigma), an estimate of the gradient of log q_sigma(x), the data density convolved with
N(0, sigma^2 I)."""

import math
from collections.abc import Callable

import torch
from torch import Tensor

Score = Callable[[Tensor, float], Tensor]


def geometric_sigmas(sigma_1: float, sigma_L: float, L: int) -> Tensor:
    """sigma_1 > sigma_2 > ... > sigma_L with a constant ratio sigma_{i-1} / sigma_i (Song & Ermon 2019, sec. 4.1),
    as a float64 (L,) tensor."""
    if L < 1 or not 0 < sigma_L <= sigma_1 or (L == 1 and sigma_L != sigma_1):
        raise ValueError(
            f"noise levels need sigma_1 >= sigma_L > 0 and L >= 1 (L = 1 only with sigma_1 = sigma_L), "
            f"got sigma_1={sigma_1}, sigma_L={sigma_L}, L={L}"
        )
    return torch.logspace(math.log10(sigma_1), math.log10(sigma_L), L, dtype=torch.float64)


def langevin(
    score: Score, x: Tensor, sigma: float, steps: int, step_size: float, generator: torch.Generator | None = None
) -> Tensor:
    """`steps` steps of Langevin dynamics on q_sigma (Song & Ermon 2019, eq. 4):
    x_t = x_{t-1} + (step_size / 2) s(x_{t-1}, sigma) + sqrt(step_size) z_t, z_t ~ N(0, I)."""
    for _ in range(steps):
        z = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        x = x + step_size / 2 * score(x, sigma) + step_size**0.5 * z
    return x


def annealed_langevin(
    score: Score,
    x: Tensor,
    sigmas: Tensor,
    steps_per_level: int,
    epsilon: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) from the initial samples x (x_0 of line 1)."""
    sigma_L = float(sigmas[-1])
    for sigma in sigmas.tolist():  # line 2: for i = 1 to L, from the largest noise level down
        alpha = epsilon * sigma**2 / sigma_L**2  # line 3: alpha_i = epsilon sigma_i^2 / sigma_L^2
        # Lines 4-7: T Langevin steps at sigma_i; line 8: their last sample starts the next level.
        x = langevin(score, x, sigma, steps_per_level, alpha, generator)
    return x  # line 10: x_T at sigma_L
