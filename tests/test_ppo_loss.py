"""The PPO losses (Schulman et al. 2017, eq. 7 and 9) against values computed by hand."""

import math

import gymnasium as gym
import numpy as np
import torch

from lightning_modules.rl.actor_critic import ActorCritic
from lightning_modules.rl.ppo import clipped_surrogate_loss, normalize, policy_change, value_loss

EPS = 0.2


def surrogate_terms(ratios, advantages):
    """Per-sample loss terms and their gradients with respect to log pi, through the real loss function."""
    log_probs = torch.tensor(ratios, dtype=torch.float64).log().requires_grad_()
    loss = clipped_surrogate_loss(log_probs, torch.zeros_like(log_probs), torch.tensor(advantages).double(), EPS)
    loss.backward()
    return loss.item(), (log_probs.grad * len(ratios)).tolist()


def test_clipped_objective_inside_and_outside_the_clip_range():
    ratios = [0.5, 0.9, 1.1, 1.5, 0.5, 0.9, 1.1, 1.5]
    advantages = [2.0, 2.0, 2.0, 2.0, -2.0, -2.0, -2.0, -2.0]
    # min(r A, clip(r, 0.8, 1.2) A), by hand:
    #   A > 0: 0.5 -> min(1.0, 1.6) = 1.0; 0.9 -> 1.8; 1.1 -> 2.2; 1.5 -> min(3.0, 2.4) = 2.4 (clipped)
    #   A < 0: 0.5 -> min(-1.0, -1.6) = -1.6 (clipped); 0.9 -> -1.8; 1.1 -> -2.2; 1.5 -> min(-3.0, -2.4) = -3.0
    objective = [1.0, 1.8, 2.2, 2.4, -1.6, -1.8, -2.2, -3.0]
    loss, grads = surrogate_terms(ratios, advantages)
    assert math.isclose(loss, -sum(objective) / 8, rel_tol=1e-12)
    # d(-r A)/d log r = -r A where the unclipped term is the minimum; 0 where the clipped one is (no incentive
    # to move further); a pessimistic bound keeps the gradient when the ratio moved the wrong way.
    want = [-1.0, -1.8, -2.2, 0.0, 0.0, 1.8, 2.2, 3.0]
    np.testing.assert_allclose(grads, want, atol=1e-12)


def test_ratio_one_is_the_policy_gradient():
    loss, grads = surrogate_terms([1.0, 1.0], [3.0, -1.0])
    assert math.isclose(loss, -(3.0 - 1.0) / 2) and grads == [-3.0, 1.0]


def test_value_loss_plain_and_clipped():
    values, old, returns = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 2.1]), torch.tensor([3.0, -1.0, 2.0])
    # Plain: 1/2 mean((v - R)^2) = 1/2 * (4 + 1 + 0) / 3.
    assert math.isclose(value_loss(values, old, returns, None).item(), 0.5 * 5 / 3, rel_tol=1e-6)
    # Clipped to old +- 0.5: v_clip = 0.5, 0.0, 2.0 -> (v_clip - R)^2 = 6.25, 1, 0; max with 4, 1, 0 -> 6.25, 1, 0.
    assert math.isclose(value_loss(values, old, returns, 0.5).item(), 0.5 * 7.25 / 3, rel_tol=1e-6)


def test_approx_kl_and_clip_fraction():
    ratios = torch.tensor([0.5, 1.0, 1.1, 1.3])
    approx_kl, clip_fraction = policy_change(ratios.log(), torch.zeros(4), EPS)
    want_kl = sum((r - 1) - math.log(r) for r in ratios.tolist()) / 4
    assert math.isclose(approx_kl.item(), want_kl, rel_tol=1e-5)
    assert clip_fraction.item() == 0.5  # 0.5 and 1.3 lie outside [0.8, 1.2]


def test_normalize():
    got = normalize(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert abs(got.mean().item()) < 1e-6 and math.isclose(got.std().item(), 1.0, rel_tol=1e-4)


def test_gaussian_policy_log_prob_and_entropy_sum_over_dimensions():
    box = gym.spaces.Box(-1, 1, (2,), np.float32)
    agent = ActorCritic(gym.spaces.Box(-1, 1, (3,), np.float32), box, hidden_dim=8)
    with torch.no_grad():
        agent.log_std.copy_(torch.tensor([0.0, math.log(2.0)]))
    observations, actions = torch.randn(5, 3), torch.randn(5, 2)
    policy = agent.policy(observations)
    mean, std = agent.greedy_action(observations), torch.tensor([1.0, 2.0])
    # log N(a; mu, diag(sigma^2)) = sum_i -(a_i - mu_i)^2 / (2 sigma_i^2) - log sigma_i - log(2 pi) / 2
    want = (-((actions - mean) ** 2) / (2 * std**2) - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(agent.log_prob(policy, actions), want)
    # entropy of a diagonal Gaussian: sum_i 1/2 log(2 pi e sigma_i^2)
    want_entropy = (0.5 * torch.log(2 * math.pi * math.e * std**2)).sum().expand(5)
    torch.testing.assert_close(agent.entropy(policy), want_entropy)


def test_categorical_policy_log_prob_and_entropy():
    agent = ActorCritic(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3), hidden_dim=8)
    observations = torch.randn(6, 4)
    policy = agent.policy(observations)
    logits = agent.actor_head(agent.actor_trunk(observations))
    probs = logits.exp() / logits.exp().sum(-1, keepdim=True)
    actions = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(agent.log_prob(policy, actions), probs[torch.arange(6), actions].log())
    torch.testing.assert_close(agent.entropy(policy), -(probs * probs.log()).sum(-1))


def test_rollout_sampling_draws_from_the_policy():
    torch.manual_seed(0)
    agent = ActorCritic(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3), hidden_dim=8)
    with torch.no_grad():
        agent.actor_head.weight.mul_(100)  # a policy far from uniform
        observations = torch.randn(2, 4).repeat_interleave(20_000, 0)
        actions, log_probs = agent.act(observations)
        policy = agent.policy(observations[[0, -1]])
    torch.testing.assert_close(log_probs, agent.policy(observations).log_prob(actions))
    for row, chosen in enumerate(actions.view(2, -1)):
        frequencies = torch.bincount(chosen, minlength=3) / len(chosen)
        torch.testing.assert_close(frequencies, policy.probs[row], atol=0.015, rtol=0)  # ~5 standard errors
