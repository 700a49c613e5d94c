"""RealNVP: every layer and the whole flow invert and have the log-determinant of their Jacobian (float64, against
torch.autograd.functional.jacobian), bits per dimension of known densities, the variational dequantiser's bound
against the exact discrete likelihood, and the model through scripts/fit.py."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_modules.flows.coupling import ActNorm, AffineCoupling, FlowBatchNorm, Squeeze, log_standard_normal
from lightning_modules.flows.dequantization import (
    LEVELS,
    UniformDequantization,
    VariationalDequantization,
    bits_per_dim,
    logit_transform,
)
from lightning_modules.flows.realnvp import MultiScaleFlow, RealNVP
from lightning_modules.protocols import HasLikelihood, Samples

SHAPE = (2, 4, 4)  # 32 variables: a Jacobian of 32 x 32


def randomised(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter drawn at random (the zero-initialised last layers of the couplings would make them the
    identity, whose Jacobian tests nothing), float64, eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.double().eval()


def jacobian_log_det(function, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of function at the single example x (1, ...), from autograd's full Jacobian."""
    jacobian = torch.autograd.functional.jacobian(function, x).reshape(x.numel(), x.numel())
    return torch.linalg.slogdet(jacobian).logabsdet


def layers():
    batch_norm = FlowBatchNorm(SHAPE[0])
    batch_norm.running_mean.normal_(generator=torch.Generator().manual_seed(1))
    batch_norm.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    return {
        "checkerboard0": AffineCoupling(SHAPE, "checkerboard", 0, hidden=8, blocks=1),
        "checkerboard1": AffineCoupling(SHAPE, "checkerboard", 1, hidden=8, blocks=1),
        "channel0": AffineCoupling(SHAPE, "channel", 0, hidden=8, blocks=1),
        "channel1": AffineCoupling(SHAPE, "channel", 1, hidden=8, blocks=0),
        "actnorm": ActNorm(SHAPE[0]),
        "batchnorm": batch_norm,
        "squeeze": Squeeze(),
    }


# float64: a 32 x 32 log-determinant and a round trip through exp(s) and exp(-s) agree to ~1e-14; 1e-9 leaves room
# for the tanh-bounded scales (|s| <= e^0.3 * 1) to amplify rounding a few orders of magnitude.
@pytest.mark.parametrize("name", list(layers()))
def test_each_layer_inverts_and_its_log_det_is_the_jacobians(name: str) -> None:
    layer = randomised(layers()[name])
    if name == "actnorm":
        layer.initialised.fill_(True)
    x = torch.randn(1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, log_det = layer(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-9)
    torch.testing.assert_close(log_det.double()[0], jacobian_log_det(lambda v: layer(v)[0], x), rtol=0, atol=1e-9)


def test_the_coupling_keeps_its_masked_half() -> None:
    """Couplings change only the variables their mask leaves out (eq. 9), so alternating parities are needed."""
    layer = randomised(AffineCoupling(SHAPE, "checkerboard", 0, hidden=8, blocks=1))
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    y, _ = layer(x)
    kept = layer.mask.expand_as(x).bool()
    assert torch.equal(y[kept], x[kept]) and not torch.allclose(y[~kept], x[~kept])


def small_flow(norm: str = "actnorm") -> MultiScaleFlow:
    return MultiScaleFlow((1, 4, 4), scales=2, stage_couplings=2, final_couplings=2, hidden=8, blocks=1, norm=norm)


@pytest.mark.parametrize("norm", ["actnorm", "batchnorm", "none"])
def test_the_multi_scale_flow_inverts_and_its_log_det_is_the_jacobians(norm: str) -> None:
    """The whole flow of two scales (squeezes and factored-out halves included) on 16 variables."""
    flow = randomised(small_flow(norm), seed=4)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    z, log_det = flow(x)
    assert z.shape == (2, 16)
    torch.testing.assert_close(flow.inverse(z), x, rtol=0, atol=1e-9)
    for i in range(2):
        expected = jacobian_log_det(lambda v: flow(v)[0], x[i : i + 1])
        torch.testing.assert_close(log_det.double()[i], expected, rtol=0, atol=1e-9)


def test_the_configs_flow_inverts_to_1e_5() -> None:
    """The default 30-coupling flow at MNIST's size after a few training steps (which move every coupling off the
    identity: their last layers start at zero), x -> z -> x in float64: 1e-5 leaves six orders of magnitude for
    the amplification of rounding through 30 layers of exp(+-s). (In fp32 the same round trip is off by ~3e-3 logit
    units, a sixth of the narrowest 8-bit level, 1 / (256 * 0.25) ~ 0.016, so samples keep their levels.)"""
    torch.manual_seed(0)
    model = RealNVP()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.rand(8, 1, 28, 28)
    for _ in range(2):
        optimizer.zero_grad()
        model.bits_per_dim(images).mean().backward()
        optimizer.step()
    model.double().eval()
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64) * 2
    z, _ = model.flow(x)
    torch.testing.assert_close(model.flow.inverse(z), x, rtol=0, atol=1e-5)


def test_bits_per_dim_of_the_uniform_distribution_is_8() -> None:
    """Each of 256 levels with probability 1/256: log P = -D log 256 nats, exactly 8 bits per dimension."""
    dims = 784
    log_likelihood = torch.full((3,), -dims * math.log(LEVELS), dtype=torch.float64)
    torch.testing.assert_close(bits_per_dim(log_likelihood, dims), torch.full((3,), 8.0, dtype=torch.float64))


def test_bits_per_dim_of_the_identity_flow_is_the_gaussians() -> None:
    """An untrained RealNVP without normalisation is the identity (its couplings' last layers start at zero), so
    its density of y in [0, 1]^D is N(0, I) in logit space: log p(y) = sum log N(logit(s)) + log|d logit(s)/dy|,
    s = alpha + (1 - 2 alpha) y; written here with torch.distributions and autograd's derivative of the map."""
    model = RealNVP(image_shape=(1, 4, 4), stage_couplings=1, final_couplings=1, norm="none").double()
    y = torch.rand(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    alpha = model.hparams.alpha
    to_logit = lambda v: torch.logit(alpha + (1 - 2 * alpha) * v)  # noqa: E731
    slope = torch.autograd.functional.jacobian(lambda v: to_logit(v).sum(), y)  # elementwise map: the diagonal
    expected = (torch.distributions.Normal(0.0, 1.0).log_prob(to_logit(y)) + slope.log()).flatten(1).sum(1)
    with torch.no_grad():
        got = model.continuous_log_prob(y)
    # float64 throughout: 16 terms of O(1) nats agree to ~1e-14; 1e-9 is far below any modelling error.
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    # In bits per dimension of the 8-bit image: -(log p(y) - D log 256) / (D log 2), i.e. 8 - log2 p(y) / D.
    torch.testing.assert_close(bits_per_dim(got - 16 * math.log(256), 16), 8 - expected / (16 * math.log(2)))


def test_the_logit_transforms_log_det_is_its_derivative() -> None:
    y = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    _, log_det = logit_transform(y, 0.05)
    for i in range(2):
        torch.testing.assert_close(log_det[i], jacobian_log_det(lambda v: logit_transform(v, 0.05)[0], y[i : i + 1]))


def exact_discrete_log_prob(model: RealNVP, levels: torch.Tensor, points: int) -> torch.Tensor:
    """log P(x) = log integral over u in [0, 1)^D of p_y((x + u) / 256) / 256^D, by the midpoint rule on a grid of
    `points`^D cells (D = 4 here)."""
    grid = (torch.arange(points, dtype=torch.float64) + 0.5) / points
    u = torch.cartesian_prod(*[grid] * levels.numel()).reshape(-1, *levels.shape[1:])
    with torch.no_grad():
        log_p = model.continuous_log_prob((levels + u) / LEVELS)
    return torch.logsumexp(log_p, 0) - math.log(len(u)) - levels.numel() * math.log(LEVELS)


def test_the_dequantisation_bounds_are_below_the_exact_likelihood() -> None:
    """For one 2 x 2 image, the exact discrete log-likelihood under a trained-looking (random) flow by quadrature
    over the dequantisation cube, against the bounds of uniform and variational dequantisation (Flow++ eq. 12) as
    Monte Carlo means of 5,000 draws. A log q(u|x) with a wrong Jacobian term (the sigmoid's, the couplings') moves
    the variational bound by several nats, above the exact value (forgetting the sigmoid's: D log 4 = 5.5 nats,
    against the random q's gap of 2.5 nats here; the uniform q's is 0.7)."""
    torch.manual_seed(0)
    model = RealNVP(image_shape=(1, 2, 2), scales=1, stage_couplings=2, final_couplings=2, hidden_channels=8,
                    norm="none", dequantization="variational", dequantization_couplings=2)  # fmt: skip
    model.flow = randomised(model.flow, seed=6)
    model.dequantizer = randomised(model.dequantizer, seed=7)
    model.dequantizer.flow[1].initialised.fill_(True)
    model.dequantizer.flow[3].initialised.fill_(True)
    model.double()
    levels = torch.tensor([[[[3.0, 250.0], [128.0, 17.0]]]], dtype=torch.float64)
    exact = exact_discrete_log_prob(model, levels, points=12)
    draws = levels.expand(5000, -1, -1, -1)
    with torch.no_grad():
        for dequantizer in (model.dequantizer, UniformDequantization()):
            y, log_q = dequantizer(draws.double())
            bound = model.continuous_log_prob(y.double()) - 4 * math.log(LEVELS) - log_q.double()
            # Slack: 4 Monte Carlo standard errors (std / sqrt(5000)) and the quadrature's error, 0.005 nats at 12
            # points (it converges as 1 / points^2: -104.366, -104.349, -104.346 at 6, 12, 18 points).
            slack = 4 * bound.std() / math.sqrt(len(bound)) + 0.01
            assert bound.mean() <= exact + slack, (dequantizer, float(bound.mean()), float(exact))
    assert isinstance(model.dequantizer, VariationalDequantization)


def test_log_q_is_the_change_of_variables_of_the_noise() -> None:
    """log q(u|x) = log N(eps) - log|det du/deps| for u = sigmoid(g(eps; x)), with the determinant from autograd's
    Jacobian of the whole map eps -> u (float64; 4 x 4 matrices agree to ~1e-14)."""
    dequantizer = randomised(VariationalDequantization((1, 2, 2), couplings=2, hidden=8, blocks=1), seed=8)
    for layer in dequantizer.flow:
        if isinstance(layer, ActNorm):
            layer.initialised.fill_(True)
    levels = torch.tensor([[[[3.0, 250.0], [128.0, 17.0]]]], dtype=torch.float64)
    context = levels / 255 * 2 - 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        eps = torch.randn(1, 1, 2, 2, dtype=torch.float64, generator=generator)
        to_u = lambda e: torch.sigmoid(dequantizer.flow(e, context)[0])  # noqa: E731
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() - jacobian_log_det(to_u, eps)
        with torch.no_grad():
            u, log_q = dequantizer.noise_and_log_q(eps, context)
        torch.testing.assert_close(u, to_u(eps), rtol=0, atol=0)
        torch.testing.assert_close(log_q[0], expected, rtol=0, atol=1e-9)


def test_samples_and_contracts() -> None:
    model = RealNVP(image_shape=(1, 8, 8), stage_couplings=1, final_couplings=1).eval()
    samples = model.sample(5, temperature=0.7)
    assert samples.shape == (5, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples * 255, torch.round(samples * 255))  # 8-bit levels, as the data
    assert isinstance(model, HasLikelihood) and isinstance(model, Samples)
    assert model.log_prob(samples).shape == (5,)


def test_bf16_autocast_reaches_the_coupling_networks_only_and_evaluation_and_sampling_stay_fp32() -> None:
    """Under bf16 autocast (a bf16-mixed run) the couplings' convolutions run in bf16, while z and the log-
    determinants stay fp32; the evaluation figure and the samples are those of the fp32 function, bit for bit
    (the same operations in the same dtype, so equal exactly), and differ from what bf16 gives."""
    torch.manual_seed(0)
    model = RealNVP(image_shape=(1, 8, 8), stage_couplings=2, final_couplings=2, scales=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    images = torch.randint(0, 256, (8, 1, 8, 8)).float() / 255
    for _ in range(3):  # off the identity: the couplings' last layers start at zero
        optimizer.zero_grad()
        model.bits_per_dim(images).mean().backward()
        optimizer.step()
    model.eval()
    network_dtypes = []
    hook = model.flow.stages[0][0].network.register_forward_hook(lambda m, i, out: network_dtypes.append(out[0].dtype))
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with torch.no_grad():
        fp32_bits = model.bits_per_dim(images, seeded())
        fp32_samples = model.sample(4, generator=seeded())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z, log_det = model.flow(images)
            bf16_bits = model.bits_per_dim(images, seeded())
            evaluated = model.fp32_bits_per_dim(images, seeded())
            sampled = model.sample(4, generator=seeded())
    hook.remove()
    assert network_dtypes[0] == torch.float32 and torch.bfloat16 in network_dtypes
    assert z.dtype == log_det.dtype == bf16_bits.dtype == torch.float32
    assert not torch.equal(bf16_bits, fp32_bits)
    assert torch.equal(evaluated, fp32_bits) and torch.equal(sampled, fp32_samples)


def learning_rates(model: RealNVP, steps: int) -> list[float]:
    """The rate of each of a run's `steps` optimiser steps, from the model's own configure_optimizers."""
    model.trainer = SimpleNamespace(estimated_stepping_batches=steps)  # the one field configure_optimizers reads
    scheduler = model.configure_optimizers()["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_learning_rate_warms_up_then_follows_the_schedule(schedule: str) -> None:
    model = RealNVP(image_shape=(1, 8, 8), stage_couplings=1, final_couplings=1, lr=1e-3, warmup_steps=10,
                    schedule=schedule)  # fmt: skip
    rates = learning_rates(model, 110)
    # Each rate is one product of float64 factors: equal to the closed form to a few ulps (rel 1e-12).
    assert rates[:10] == pytest.approx([1e-3 * (k + 1) / 10 for k in range(10)], rel=1e-12)
    # The cosine's progress counts from step 0, the warm-up included (WarmupDecay's decay_start).
    cosine = [0.5 * (1 + math.cos(math.pi * k / 110)) for k in range(10, 110)]
    decay = [1.0] * 100 if schedule == "constant" else cosine
    assert rates[10:] == pytest.approx([1e-3 * f for f in decay], rel=1e-12, abs=1e-18)


def test_the_cooldown_anneals_the_last_steps_of_a_constant_run() -> None:
    model = RealNVP(image_shape=(1, 8, 8), stage_couplings=1, final_couplings=1, lr=1e-3, warmup_steps=10,
                    cooldown_fraction=5 / 11)  # fmt: skip
    rates = learning_rates(model, 110)  # the cool-down: the last 50 steps
    # Products of float64 factors against the closed form: a few ulps (rel 1e-12), as above.
    assert rates[10:60] == pytest.approx([1e-3] * 50, rel=1e-12)
    cooldown = [0.5 * (1 + math.cos(math.pi * k / 50)) for k in range(50)]
    assert rates[60:] == pytest.approx([1e-3 * f for f in cooldown], rel=1e-12, abs=1e-18)


def test_a_constant_run_resumed_with_a_cooldown_follows_the_new_schedule(
    data_root: Path, tmp_path: Path, fit_in_process
) -> None:
    common = ("--model", "realnvp", "--data.root", str(data_root), *SMALL, "--model.warmup_steps", "0",
              "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
              "--trainer.limit_test_batches", "1", "--trainer.callbacks", "[]")  # fmt: skip
    first = fit_in_process(*common, "--trainer.max_epochs", "1", "--model.cooldown_fraction", "0")  # constant
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = fit_in_process(*common, "--ckpt_path", "last", "--trainer.max_epochs", "3",
                             "--model.cooldown_fraction", str(2 / 3))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = sorted(tmp_path.glob("runs/realnvp/version_*/checkpoints/last.ckpt"))[-1]
    scheduler = torch.load(last, map_location="cpu", weights_only=True)["lr_schedulers"][0]
    # 2 steps an epoch: constant through the first epoch, then the cosine over steps 2..6; the saved constant
    # schedule of the first run did not come back over it, and the rate ended at 0 (cos(pi) = -1, exactly 0 here).
    fields = scheduler["lr_lambdas"][0]
    assert (fields["kind"], fields["decay_start"], fields["decay_end"]) == ("cosine", 2.0, 6.0)
    assert scheduler["last_epoch"] == 6
    assert scheduler["_last_lr"] == [0.0]


def test_bad_options_are_one_line() -> None:
    with pytest.raises(ValueError, match=r"--model.scales 3: the image side must be divisible by 2 \*\* scales = 8"):
        RealNVP(image_shape=(1, 28, 28), scales=3)
    with pytest.raises(ValueError, match="--model.alpha must be in"):
        RealNVP(alpha=0.5)
    with pytest.raises(ValueError, match="--model.cooldown_fraction decays the constant schedule"):
        RealNVP(schedule="cosine", cooldown_fraction=0.5)
    with pytest.raises(
        ValueError, match=r"--model.cooldown_fraction must be in \[0, 1\] \(a share of the run\), got 2"
    ):
        RealNVP(cooldown_fraction=2)
    endless = RealNVP(image_shape=(1, 8, 8), stage_couplings=1, final_couplings=1, cooldown_fraction=0.5)
    endless.trainer = SimpleNamespace(estimated_stepping_batches=math.inf)  # --trainer.max_epochs -1, a time budget
    with pytest.raises(
        ValueError, match="needs a run of known length: set --trainer.max_epochs or --trainer.max_steps"
    ):
        endless.configure_optimizers()


RANKING_ONLY = "[{class_path: callbacks.likelihood_ranking.LikelihoodRanking, init_args: {n: 16, k: 4}}]"
SMALL = ("--model.stage_couplings", "1", "--model.final_couplings", "1", "--data.batch_size", "16")


@pytest.mark.parametrize("extra", [[], ["--model.dequantization", "variational", "--model.norm", "batchnorm"]])
def test_fit_writes_the_likelihood_ranking(extra: list[str], data_root: Path, tmp_path: Path, fit_in_process) -> None:
    result = fit_in_process("--model", "realnvp", "--data.root", str(data_root), "--trainer.max_steps", "2",
                            "--trainer.limit_val_batches", "1", "--trainer.num_sanity_val_steps", "0", *SMALL,
                            "--trainer.callbacks", RANKING_ONLY, *extra)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/bits_per_dim" in result.stdout
    grids = sorted(p.name.split("_epoch")[0] for p in (tmp_path / "runs" / "realnvp").rglob("likelihood/*.png"))
    assert grids == ["samples_least", "samples_most", "test_least", "test_most"]


def test_fast_dev_run(data_root: Path, fit_in_process) -> None:
    result = fit_in_process("--model", "realnvp", "--data.root", str(data_root), "--trainer.fast_dev_run", "true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/bits_per_dim" in result.stdout


def test_the_flow_traces_as_one_graph_for_torch_compile() -> None:
    """No graph break in a training forward once ActNorm has its initialisation (a break at every ActNorm made
    --model.compile compile dozens of small graphs and fall back to eager after torch's recompile limit)."""
    flow = MultiScaleFlow((1, 8, 8), scales=1, stage_couplings=2, final_couplings=2, hidden=4, blocks=1, norm="actnorm")
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    flow.train()(x)  # the data-dependent initialisation, eagerly
    explained = torch._dynamo.explain(flow)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)


def test_actnorm_initialises_once_and_again_after_a_load_of_an_uninitialised_state() -> None:
    layer = ActNorm(2).train()
    first, second = torch.randn(16, 2, 3, 3) * 5 + 3, torch.randn(16, 2, 3, 3)
    layer(first)
    initialised_from_first = layer.state_dict()
    layer(second)  # initialised already: the parameters stay those of the first batch
    torch.testing.assert_close(layer.state_dict(), initialised_from_first, rtol=0, atol=0)
    layer.load_state_dict(ActNorm(2).state_dict())  # an uninitialised state: the next batch initialises again
    y, _ = layer(second)
    # Zero mean and unit variance per channel over the batch: float32 sums of 144 values, far inside 1e-5.
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(2), rtol=0, atol=1e-5)


@pytest.mark.slow  # torch.compile on the CPU: one to two minutes
def test_the_compiled_flow_trains_on_the_eager_gradients() -> None:
    """From the first step (ActNorm's initialisation inside the compiled call) and on the next, the compiled flow's
    loss and gradients are the eager flow's to fp32 rounding."""
    x = torch.rand(16, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    eager, compiled = small_flow().float().train(), small_flow().float().train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    for step in range(2):
        losses = []
        for flow in (eager, compiled):
            flow.zero_grad()
            z, log_det = flow(x)
            losses.append(-(log_standard_normal(z) + log_det).mean())
            losses[-1].backward()
        # A mean of 16 sums of 16 log-densities, each a few units: fp32 reordering moves it by ~1e-6 relative.
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
        eager_grads = [p.grad for p in eager.parameters()]
        scale = torch.cat([g.flatten() for g in eager_grads]).norm()
        # Fused and reordered fp32 sums: each gradient within a few 1e-7 of the whole gradient's norm (1e-5 leaves
        # room for the error's growth through the layers).
        for e, c in zip(eager_grads, (p.grad for p in compiled.parameters()), strict=True):
            assert (e - c).norm() <= 1e-5 * scale, f"step {step}"


def test_actnorm_is_initialised_eagerly_before_the_flows_first_call() -> None:
    """The first training batch initialises every ActNorm through the flow's plain forward, before the flow's call
    (the compiled one under --model.compile): the compiled graph never meets the data-dependent branch."""
    model = RealNVP(image_shape=(1, 4, 4), scales=1, stage_couplings=2, final_couplings=2, hidden_channels=4).train()
    ready_at_call = []
    model.flow.register_forward_pre_hook(
        lambda module, args: ready_at_call.append(all(norm.seen_initialised for norm in model.actnorms))
    )
    model.bits_per_dim(torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)))
    model.bits_per_dim(torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    assert len(model.actnorms) == 6 and ready_at_call == [True, True]
