"""The differentiable floor: its values at the integers and half-integers, its continuity where its pieces meet,
its gradient against finite differences and against the closed-form derivative; the quantisation layers; and
the quantised autoencoder through fit.py."""

import math

import pytest
import torch

from lightning_modules.blocks.softfloor import (
    SoftFloor,
    StraightThroughRound,
    softfloor,
    softfloor_derivative,
    softfloor_offset,
)
from lightning_modules.experiments.quantized_autoencoder import QuantizedAutoencoder

INTEGERS = torch.arange(-5, 6, dtype=torch.float64)


@pytest.mark.parametrize(("sharpness", "epsilon"), [(20.0, 0.01), (8.0, 0.1), (50.0, 1e-4), (3.0, 0.5)])
def test_softfloor_is_n_minus_epsilon_at_every_integer(sharpness, epsilon):
    # float64: sigmoid, logit and the division each round at ~1e-16 relative; values of order 5: 1e-12 is ample.
    torch.testing.assert_close(softfloor(INTEGERS, sharpness, epsilon), INTEGERS - epsilon, rtol=0, atol=1e-12)


def test_softfloor_sits_on_the_floor_at_the_half_integers():
    """Half-way between integers the staircase is on its plateau: within 0.005 of the floor for k = 20, and the
    error falls like exp(-k (1/2 - delta)) as the steps sharpen."""
    halves = INTEGERS + 0.5
    assert (softfloor(halves, 20.0, 0.01) - INTEGERS).abs().max() < 0.005
    assert (softfloor(halves, 60.0, 0.01) - INTEGERS).abs().max() < 1e-6
    # The step from n - 1 to n is centred delta before n (softfloor = n - 1/2 there), not at n + 1/2.
    delta = softfloor_offset(20.0, 0.01)
    torch.testing.assert_close(softfloor(INTEGERS - delta, 20.0, 0.01), INTEGERS - 0.5, rtol=0, atol=1e-12)


def test_the_offset_solves_the_condition_in_closed_form():
    """delta against a bisection of g(delta) = 1 - epsilon, g the normalised sigmoid step on [-1/2, 1/2]."""
    k, epsilon = 20.0, 0.01
    g = lambda t: 0.5 + (1 / (1 + math.exp(-k * t)) - 0.5) / (2 / (1 + math.exp(-k / 2)) - 1)  # noqa: E731
    low, high = 0.0, 0.5
    for _ in range(60):  # 2^-60 of the interval: below float64's resolution of delta
        middle = (low + high) / 2
        low, high = (middle, high) if g(middle) < 1 - epsilon else (low, middle)
    assert softfloor_offset(k, epsilon) == pytest.approx(low, abs=1e-12)


def test_the_pieces_meet_with_equal_values_and_slopes():
    """The pieces meet where x - 1/2 + delta is an integer: approached from both sides the values and slopes agree
    to O(h) (h = 1e-9 with slopes of at most 20 / tanh(5) gives differences of ~2e-8; 1e-7 leaves room)."""
    k, epsilon, h = 20.0, 0.01, 1e-9
    joins = INTEGERS + 0.5 - softfloor_offset(k, epsilon)
    for f in (softfloor, softfloor_derivative):
        torch.testing.assert_close(f(joins - h, k, epsilon), f(joins + h, k, epsilon), rtol=0, atol=1e-7)


def test_gradient_matches_finite_differences_and_the_closed_form():
    torch.manual_seed(0)
    x = torch.cat([torch.rand(40, dtype=torch.float64) * 8 - 4, INTEGERS, INTEGERS + 0.5]).requires_grad_()
    # gradcheck: central differences (eps 1e-6) against autograd, to its float64 default tolerances.
    assert torch.autograd.gradcheck(lambda v: softfloor(v, 7.0, 0.05), (x,))
    (grad,) = torch.autograd.grad(softfloor(x, 7.0, 0.05).sum(), x)
    # The same sigmoid values multiplied in another order: agreement to float64 rounding.
    torch.testing.assert_close(grad, softfloor_derivative(x.detach(), 7.0, 0.05), rtol=1e-12, atol=1e-12)
    assert (grad > 0).all()  # a staircase that only rises


def test_softfloor_layer_is_soft_in_training_and_the_floor_in_evaluation():
    layer, x = SoftFloor(20.0, 0.01), torch.tensor([0.3, 1.0, 2.7, -0.2])
    torch.testing.assert_close(layer(x), softfloor(x, 20.0, 0.01))
    assert torch.equal(layer.eval()(x), torch.tensor([0.0, 1.0, 2.0, -1.0]))


def test_straight_through_round_gives_the_floor_forward_and_the_identity_backward():
    x = torch.tensor([0.3, 1.6, 2.7, -0.2], requires_grad=True)
    out = StraightThroughRound()(x)
    assert torch.equal(out, torch.floor(x.detach()))
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize(("sharpness", "epsilon"), [(0.0, 0.01), (10.0, 0.0), (10.0, 0.6)])
def test_bad_options_are_rejected_in_one_line(sharpness, epsilon):
    with pytest.raises(ValueError, match=r"--model\.(sharpness|epsilon)"):
        SoftFloor(sharpness, epsilon)


@pytest.mark.parametrize("quantizer", ["softfloor", "round_ste"])
def test_the_code_is_integer_in_evaluation_and_trains_the_encoder(quantizer):
    torch.manual_seed(0)
    model = QuantizedAutoencoder(image_shape=(1, 8, 8), hidden_dims=(16,), latent_dim=6, levels=4, quantizer=quantizer)
    x = torch.rand(32, 1, 8, 8)
    model.loss(x).backward()
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.weight.grad.abs().sum() > 0  # the gradient got through the quantiser
    with torch.no_grad():
        code = model.eval().encode(x)
    assert torch.equal(code, code.round()) and code.min() >= 0 and code.max() <= 3


def test_no_quantizer_is_the_continuous_code():
    model = QuantizedAutoencoder(image_shape=(1, 8, 8), hidden_dims=(16,), latent_dim=6, levels=4, quantizer="none")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().encode(x), 4 * torch.sigmoid(model.encoder(x)) - 0.5)


def test_bad_quantizer_is_rejected():
    with pytest.raises(ValueError, match="--model.quantizer"):
        QuantizedAutoencoder(quantizer="ceil")
    with pytest.raises(ValueError, match="--model.levels"):
        QuantizedAutoencoder(levels=1)


@pytest.mark.parametrize("quantizer", ["softfloor", "round_ste"])
def test_fast_dev_run(quantizer, data_root, fit_in_process):
    result = fit_in_process(
        "--model", "softfloor", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16", "--model.quantizer", quantizer,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/mse = " in result.stdout
