"""A differentiable floor built from sigmoids, as a function and as a quantisation layer.

The staircase. Take the smooth step of height 1 over the unit interval centred at 0,

    g(t) = 1/2 + (sigmoid(k t) - 1/2) / (2 sigmoid(k/2) - 1),    t in [-1/2, 1/2],

which is exactly 0 at t = -1/2 and exactly 1 at t = 1/2 (the division rescales the sigmoid's range over the
interval to [0, 1]), and whose slope k sigmoid'(k t) / (2 sigmoid(k/2) - 1) is even in t, so equal at both ends.
Stacking one step per unit, R(y) = floor(y) + g(y - floor(y) - 1/2), gives a staircase that is continuous with a
continuous slope (the pieces meet at the integers with equal values and slopes), equal to m at every integer m
and rising by 1 around every half-integer: a smooth round().

The floor. floor(x) = round(x - 1/2) rises at the integers; the smooth staircase shifted by exactly 1/2 would
sit at n - 1/2 at every integer n, halfway up its step. Shift it by 1/2 - delta instead,

    softfloor(x) = R(x - 1/2 + delta),

so that each step is centred delta before its integer and has nearly finished by the time x reaches it. The
adjustment delta is fixed by asking that softfloor(n) = n - epsilon at every integer n: at x = n,
y = n - 1/2 + delta, floor(y) = n - 1 and t = delta, so the condition g(delta) = 1 - epsilon reads

    sigmoid(k delta) = 1/2 + (1/2 - epsilon) (2 sigmoid(k/2) - 1),
    delta = logit(1/2 + (1/2 - epsilon) (2 sigmoid(k/2) - 1)) / k,

in closed form; 0 < epsilon <= 1/2 puts delta in [0, 1/2). The half-integers lie on the plateaus:
softfloor(n + 1/2) = n + g(delta - 1/2), n + 0.0044 for the defaults k = 20, epsilon = 0.01 (delta = 0.23).
The derivative is the step's slope, d softfloor / dx = k sigmoid(k t) (1 - sigmoid(k t)) / (2 sigmoid(k/2) - 1)
with t = y - floor(y) - 1/2: ~0 on the plateaus, k / (4 (2 sigmoid(k/2) - 1)) at the centre of each step.
"""

import math

import torch
from torch import nn


def check_softfloor_options(sharpness: float, epsilon: float) -> None:
    """One line naming the bad option: the closed form needs k > 0 and 0 < epsilon <= 1/2."""
    if not sharpness > 0:
        raise ValueError(f"--model.sharpness must be > 0 (the sigmoids' slope), got {sharpness}")
    if not 0 < epsilon <= 0.5:
        raise ValueError(f"--model.epsilon must be in (0, 0.5] (softfloor(n) = n - epsilon), got {epsilon}")


def step_scale(sharpness: float) -> float:
    """2 sigmoid(k/2) - 1 = tanh(k/4): the sigmoid's rise over one unit, which g divides by."""
    return math.tanh(sharpness / 4)


def softfloor_offset(sharpness: float, epsilon: float) -> float:
    """delta, solved in closed form so that softfloor(n) = n - epsilon at every integer (module docstring)."""
    check_softfloor_options(sharpness, epsilon)
    p = 0.5 + (0.5 - epsilon) * step_scale(sharpness)
    return math.log(p / (1 - p)) / sharpness


def step_position(x: torch.Tensor, sharpness: float, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(floor(y), t) for y = x - 1/2 + delta: the step x is on and where on it, t in [-1/2, 1/2)."""
    y = x - 0.5 + softfloor_offset(sharpness, epsilon)
    base = torch.floor(y)
    return base, y - base - 0.5


def softfloor(x: torch.Tensor, sharpness: float = 20.0, epsilon: float = 0.01) -> torch.Tensor:
    """The differentiable floor R(x - 1/2 + delta) of the module docstring: n - epsilon at every integer n,
    within about sigmoid(-k (1/2 - delta)) of floor(x) at the half-integers."""
    base, t = step_position(x, sharpness, epsilon)
    # floor() passes no gradient: the derivative is the sigmoid's alone, through t.
    return base + 0.5 + (torch.sigmoid(sharpness * t) - 0.5) / step_scale(sharpness)


def softfloor_derivative(x: torch.Tensor, sharpness: float = 20.0, epsilon: float = 0.01) -> torch.Tensor:
    """d softfloor / dx in closed form: k sigmoid(k t) (1 - sigmoid(k t)) / tanh(k / 4)."""
    _, t = step_position(x, sharpness, epsilon)
    s = torch.sigmoid(sharpness * t)
    return sharpness * s * (1 - s) / step_scale(sharpness)


class SoftFloor(nn.Module):
    """Quantisation by the floor: softfloor(x) in training, so that gradients reach the layers before it, and
    the exact floor(x) in evaluation, so that the code is integer."""

    def __init__(self, sharpness: float = 20.0, epsilon: float = 0.01) -> None:
        """
        Args:
            sharpness: k, the sigmoids' slope: the larger, the closer to the floor and the narrower the steps
                that pass gradient.
            epsilon: softfloor(n) = n - epsilon at the integers (0 < epsilon <= 1/2).
        """
        super().__init__()
        check_softfloor_options(sharpness, epsilon)
        self.sharpness, self.epsilon = sharpness, epsilon

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softfloor(x, self.sharpness, self.epsilon) if self.training else torch.floor(x)

    def extra_repr(self) -> str:
        return f"sharpness={self.sharpness}, epsilon={self.epsilon}"


class StraightThroughRound(nn.Module):
    """The baseline: round(x - 1/2), the same integers as floor(x) (but on the measure-zero set of integers x),
    forward, and the identity backward (the straight-through estimator of Bengio, Leonard & Courville 2013), in
    training and evaluation alike."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shifted = x - 0.5
        return shifted + (torch.round(shifted) - shifted).detach()


class ContinuousFloor(nn.Module):
    """No quantisation, for reference: x - 1/2, the floor's average level, so that the decoder sees the same
    range as with the quantisers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 0.5
