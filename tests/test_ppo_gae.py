"""GAE (Schulman et al. 2016, eq. 11-16) against the plain sum of discounted TD residuals, on hand-made
trajectories with terminations and truncations, and through a real rollout of a known environment."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from lightning_modules.rl.ppo import PPO, generalized_advantages


def reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A_t = sum_l (gamma lambda)^l delta_{t+l} (eq. 16), summed forward until the episode ends; a terminated
    step has no bootstrap value (its future is zero), a truncated one keeps V(final observation)."""
    steps, envs = len(rewards), len(rewards[0])
    advantages = np.zeros((steps, envs))
    for n in range(envs):
        for t in range(steps):
            total, weight = 0.0, 1.0
            for k in range(t, steps):
                bootstrap = 0.0 if terminated[k][n] else gamma * next_values[k][n]
                total += weight * (rewards[k][n] + bootstrap - values[k][n])
                if terminated[k][n] or truncated[k][n]:
                    break
                weight *= gamma * lam
            advantages[t, n] = total
    return advantages


def gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    as_tensor = lambda x, dtype=torch.float32: torch.tensor(x, dtype=dtype)  # noqa: E731
    terminated, truncated = as_tensor(terminated, torch.bool), as_tensor(truncated, torch.bool)
    return generalized_advantages(
        as_tensor(rewards), as_tensor(values), as_tensor(next_values), terminated, terminated | truncated, gamma, lam
    ).numpy()


def test_hand_computed_single_episode():
    # Three steps of reward 1, values 0, then termination: with gamma = lambda = 1 each advantage is the
    # return-to-go, 3, 2, 1; the bootstrap value 10 after a termination must be ignored.
    got = gae([[1], [1], [1]], [[0], [0], [0]], [[0], [0], [10]], [[0], [0], [1]], [[0], [0], [0]], 1.0, 1.0)
    np.testing.assert_allclose(got[:, 0], [3, 2, 1])
    # The same end as a truncation: the time limit cut a future worth 10, which is bootstrapped.
    got = gae([[1], [1], [1]], [[0], [0], [0]], [[0], [0], [10]], [[0], [0], [0]], [[0], [0], [1]], 1.0, 1.0)
    np.testing.assert_allclose(got[:, 0], [13, 12, 11])


def test_advantages_stop_at_episode_boundaries():
    # gamma 0.5, lambda 1: delta_0 = 1 + 0.5 * 4 - 2 = 1 and the episode ends; step 1 starts a new one.
    rewards, values, next_values = [[1.0], [0.0]], [[2.0], [8.0]], [[4.0], [0.0]]
    got = gae(rewards, values, next_values, [[1], [0]], [[0], [0]], 0.5, 1.0)
    np.testing.assert_allclose(got[:, 0], [1 + 0 - 2, 0 + 0 - 8])


@pytest.mark.parametrize("gamma, lam", [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0)])
def test_random_trajectories_against_the_reference_loop(gamma, lam):
    rng = np.random.default_rng(0)
    steps, envs = 40, 5
    rewards, values, next_values = (rng.normal(size=(steps, envs)) for _ in range(3))
    terminated = rng.random((steps, envs)) < 0.1
    truncated = (rng.random((steps, envs)) < 0.1) & ~terminated
    truncated[7, 0] = terminated[7, 0] = True  # a time limit hit on the terminal step: the termination wins
    want = reference_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    got = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


class Counter(gym.Env):
    """Observation = the number of steps taken in the episode; reward 1; ends after 3 steps, by termination
    (`terminate=True`) or by a time limit. The state reached by any step is its observation + 1, also when the
    episode ended there, so the right bootstrap value is always V(observation + 1)."""

    observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, terminate: bool = True) -> None:
        self.terminate = terminate

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.count = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.count += 1
        return np.array([self.count], np.float32), 1.0, self.terminate and self.count == 3, False, {}


gym.register("ZooCounterTerminates-v0", entry_point=Counter, kwargs={"terminate": True})
gym.register("ZooCounterTruncated-v0", entry_point=Counter, kwargs={"terminate": False}, max_episode_steps=3)


@pytest.mark.parametrize("env_id", ["ZooCounterTerminates-v0", "ZooCounterTruncated-v0"])
def test_rollout_bootstraps_truncations_with_the_final_observation(env_id):
    torch.manual_seed(0)
    model = PPO(env_id=env_id, num_envs=2, num_steps=8, num_minibatches=2, gamma=0.9, gae_lambda=0.8)
    model.on_train_start()
    rollout, (returns, lengths, _) = model.collect_rollout()
    model.on_train_end()
    observations = rollout.observations.view(8, 2, 1)
    with torch.no_grad():
        values, next_values = model.agent.value(observations), model.agent.value(observations + 1)
    ended = (observations[..., 0] == 2).numpy()  # the third step of each episode
    terminated = ended if env_id == "ZooCounterTerminates-v0" else np.zeros_like(ended)
    want = reference_gae(
        np.ones((8, 2)), values.numpy(), next_values.numpy(), terminated, ended & ~terminated, 0.9, 0.8
    )
    np.testing.assert_allclose(rollout.advantages.view(8, 2).numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rollout.returns, rollout.advantages + rollout.values)
    # 8 steps of 2 environments finish 2 episodes each, of return 3 and length 3.
    assert returns.tolist() == [3.0] * 4 and lengths.tolist() == [3] * 4
