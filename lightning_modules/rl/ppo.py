"""Proximal Policy Optimization (Schulman et al. 2017) with generalized advantage estimation (Schulman et al.
2016), on gymnasium's vectorised environments. One Lightning epoch = one rollout of num_envs x num_steps
environment steps, then update_epochs x num_minibatches optimiser steps on it (manual optimisation).
The defaults are CleanRL's ppo.py (4 x 128 steps, 4 x 4 minibatches, 500k steps), which solves CartPole-v1."""

from dataclasses import dataclass

import gymnasium as gym
import lightning as L
import numpy as np
import torch
from jsonargparse.typing import PositiveInt
from torch import Tensor

from lightning_modules.rl.actor_critic import ActorCritic
from lightning_modules.rl.environments import EVAL_SEED, make_vector_env


def generalized_advantages(
    rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, ended: Tensor, gamma: float, lam: float
) -> Tensor:
    """GAE(gamma, lambda) of a (T, N) rollout (Schulman et al. 2016, eq. 11-16), computed backwards as
    A_t = delta_t + gamma * lambda * A_{t+1}, with the TD residual delta_t = r_t + gamma V(s_{t+1}) - V(s_t) (eq. 12).

    `next_values[t]` is V of the state reached by step t: for an episode that ended there, the value of its final
    observation, not of the next episode's first one. A termination (the MDP's own end) has no future, so its
    bootstrap is dropped from delta; a truncation (a time limit) keeps it. Either way the sum stops at the end of
    the episode (`ended` = terminated or truncated): the next step belongs to another episode.
    """
    deltas = rewards + gamma * next_values * (1.0 - terminated.float()) - values
    carry = (1.0 - ended.float()) * gamma * lam
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in reversed(range(deltas.shape[0])):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages


def clipped_surrogate_loss(log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, clip_coef: float) -> Tensor:
    """-L^CLIP (Schulman et al. 2017, eq. 7): -E[min(r A, clip(r, 1 - eps, 1 + eps) A)], with the probability
    ratio r = pi(a|s) / pi_old(a|s) (eq. 6). The min makes it a pessimistic bound: moving r beyond the clip range
    in the direction the advantage rewards earns nothing."""
    ratio = (log_probs - old_log_probs).exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip_coef: float | None) -> Tensor:
    """L^VF (Schulman et al. 2017, eq. 9): 1/2 E[(V(s) - V_targ)^2]. With `clip_coef`, the pessimistic max with a
    value kept within clip_coef of the rollout's (OpenAI baselines' ppo2, as in CleanRL)."""
    squared = (values - returns).pow(2)
    if clip_coef is None:
        return 0.5 * squared.mean()
    clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(squared, (clipped - returns).pow(2)).mean()


def policy_change(log_probs: Tensor, old_log_probs: Tensor, clip_coef: float) -> tuple[Tensor, Tensor]:
    """Approximate KL(pi_old || pi) by the low-variance estimator E[(r - 1) - log r] (Schulman's "k3"), and the
    fraction of samples whose ratio was clipped: how far one update moved the policy."""
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    approx_kl = ((ratio - 1.0) - log_ratio).mean()
    clip_fraction = ((ratio - 1.0).abs() > clip_coef).float().mean()
    return approx_kl, clip_fraction


def normalize(advantages: Tensor) -> Tensor:
    """Zero mean, unit variance within a minibatch (an implementation detail of the PPO code, not the paper)."""
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


@dataclass
class Rollout:
    """num_steps x num_envs transitions, flattened to (B, ...) with B = num_steps * num_envs."""

    observations: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor


def refuse_dataset(batch) -> None:
    """PPO collects its own data: its batches are the environment DataModule's ticks (one tensor), never a
    dataset's (tuples of tensors), which it would otherwise ignore while training for their number of batches."""
    if not isinstance(batch, Tensor):
        raise ValueError("ppo plays its Gymnasium environment and takes no dataset: use --data gym (or drop --data)")


class PPO(L.LightningModule):
    """PPO-clip with an MLP actor-critic: categorical policy for discrete actions, diagonal Gaussian for boxes."""

    benchmark_metric = "test/mean_return"
    throughput_unit = "env_steps"

    def __init__(
        self,
        env_id: str = "CartPole-v1",
        num_envs: PositiveInt = 4,
        num_steps: PositiveInt = 128,
        total_env_steps: PositiveInt = 500_000,
        update_epochs: PositiveInt = 4,
        num_minibatches: PositiveInt = 4,
        lr: float = 2.5e-4,
        anneal_lr: bool = True,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_coef: float = 0.2,
        clip_value_loss: bool = True,
        normalize_advantages: bool = True,
        ent_coef: float = 0.01,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        hidden_dim: PositiveInt = 64,
        shared_trunk: bool = False,
        compile: bool = False,
    ) -> None:
        """
        Args:
            env_id: a gymnasium environment with a flat observation vector and Discrete or 1-D Box actions.
            num_envs: environments stepped in parallel (gymnasium.vector, same process).
            num_steps: steps per environment in one rollout; a rollout is num_envs * num_steps transitions.
            total_env_steps: training length in environment steps; training stops after
                total_env_steps // (num_envs * num_steps) rollouts, and the learning rate anneals over them.
            update_epochs: passes over each rollout (K in the paper).
            num_minibatches: minibatches per pass; each holds num_envs * num_steps / num_minibatches transitions.
            lr: Adam learning rate (eps 1e-5) at the start.
            anneal_lr: decay the learning rate linearly to 0 over the training.
            gamma: discount factor.
            gae_lambda: lambda of GAE (eq. 11 of Schulman et al. 2016).
            clip_coef: epsilon of the clipped objective (eq. 7).
            clip_value_loss: clip the value update too (ppo2); false gives the plain squared error.
            normalize_advantages: normalise advantages per minibatch.
            ent_coef: weight c2 of the entropy bonus (eq. 9).
            vf_coef: weight c1 of the value loss (eq. 9).
            max_grad_norm: clip the global gradient norm to this.
            hidden_dim: width of the two tanh hidden layers of the actor and of the critic.
            shared_trunk: one hidden trunk for actor and critic instead of two.
            compile: run the actor's and the critic's networks through torch.compile, in place: the state_dict keys
                stay the plain ones, so a checkpoint loads with or without the flag.
        """
        super().__init__()
        if (num_envs * num_steps) % num_minibatches:
            raise ValueError(
                f"--model.num_minibatches ({num_minibatches}) must divide num_envs * num_steps ({num_envs * num_steps})"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        probe = make_vector_env(env_id, 1)
        observation_space, action_space = probe.single_observation_space, probe.single_action_space
        probe.close()
        self.agent = ActorCritic(observation_space, action_space, hidden_dim, shared_trunk)
        if compile:  # the trunks and heads: the distributions built from their outputs stay eager
            for network in self.agent.children():
                network.compile()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if not self.discrete:
            self.register_buffer("action_low", torch.as_tensor(action_space.low), persistent=False)
            self.register_buffer("action_high", torch.as_tensor(action_space.high), persistent=False)
        # The mean return that counts as solving the environment (475 for CartPole-v1; None for Pendulum).
        self.reward_threshold: float | None = gym.spec(env_id).reward_threshold
        self.rollout_env_steps = num_envs * num_steps
        self.num_rollouts = max(1, total_env_steps // self.rollout_env_steps)
        self.envs: gym.vector.VectorEnv | None = None

    # ---- environment interaction -------------------------------------------------------------------------------

    def to_env_action(self, action: Tensor) -> np.ndarray:
        """Gaussian samples are unbounded; the environment gets them clipped to its box (their log-probability is
        that of the unclipped sample, as in CleanRL)."""
        if not self.discrete:
            action = torch.max(torch.min(action, self.action_high), self.action_low)
        return action.cpu().numpy()

    def on_train_start(self) -> None:
        # The run's --seed (seed_everything seeds torch); a resumed run continues with fresh episodes.
        seed = torch.initial_seed() + self.current_epoch
        self.envs = make_vector_env(self.hparams.env_id, self.hparams.num_envs)
        observations, _ = self.envs.reset(seed=seed)
        self.next_observations = torch.as_tensor(observations, dtype=torch.float32, device=self.device)

    def on_train_end(self) -> None:
        if self.envs is not None:
            self.envs.close()
            self.envs = None

    @torch.no_grad()
    def collect_rollout(self) -> tuple[Rollout, list[np.ndarray]]:
        """Step the environments num_steps times with the current policy; returns the flattened rollout with its
        GAE advantages, and the (returns, lengths, end steps) of the episodes that finished during it: an
        episode's end step is the run's environment step (all environments counted) at which it ended."""
        h, envs, device = self.hparams, self.envs, self.device
        T, N = h.num_steps, h.num_envs
        observations = torch.empty((T, N, *self.agent.observation_shape), device=device)
        final_observations = torch.zeros_like(observations)
        actions = torch.empty((T, N, *self.agent.action_shape), device=device, dtype=self.agent.action_dtype)
        log_probs = torch.empty((T, N), device=device)
        rewards = np.empty((T, N), dtype=np.float32)
        terminated = np.empty((T, N), dtype=bool)
        truncated = np.empty((T, N), dtype=bool)
        finished_returns, finished_lengths, finished_at = [], [], []
        steps_before = self.current_epoch * self.rollout_env_steps
        obs = self.next_observations
        for t in range(T):
            observations[t] = obs
            action, log_probs[t] = self.agent.act(obs)
            actions[t] = action
            next_obs, rewards[t], terminated[t], truncated[t], info = envs.step(self.to_env_action(action))
            if "final_obs" in info:
                for i in np.flatnonzero(info["_final_obs"]):
                    final_observations[t, i] = torch.as_tensor(info["final_obs"][i], device=device)
            if "episode" in info:
                done = info["_episode"]
                finished_returns.append(info["episode"]["r"][done])
                finished_lengths.append(info["episode"]["l"][done])
                finished_at.append(np.full(done.sum(), steps_before + (t + 1) * N))
            obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
        self.next_observations = obs

        # Values of every state in one batch: the rollout's, the state after it, and the final ones of ended episodes.
        all_values = self.agent.value(torch.cat([observations, obs[None], final_observations]).flatten(0, 1))
        values, after, final_values = all_values.view(2 * T + 1, N).split([T, 1, T])
        ended = torch.as_tensor(terminated | truncated, device=device)
        next_values = torch.where(ended, final_values, torch.cat([values[1:], after]))
        advantages = generalized_advantages(
            torch.as_tensor(rewards, device=device),
            values,
            next_values,
            torch.as_tensor(terminated, device=device),
            ended,
            h.gamma,
            h.gae_lambda,
        )
        rollout = Rollout(
            observations.flatten(0, 1),
            actions.flatten(0, 1),
            log_probs.flatten(),
            values.flatten(),
            advantages.flatten(),
            (advantages + values).flatten(),
        )
        episodes = [np.concatenate(x) if x else np.empty(0) for x in (finished_returns, finished_lengths, finished_at)]
        return rollout, episodes

    # ---- learning ----------------------------------------------------------------------------------------------

    def ppo_loss(self, rollout: Rollout, index: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """-L^{CLIP+VF+S} (Schulman et al. 2017, eq. 9) on the minibatch `index`: policy loss + c1 value loss
        - c2 entropy, to be minimised."""
        h = self.hparams
        policy, values = self.agent(rollout.observations[index])
        log_probs = self.agent.log_prob(policy, rollout.actions[index])
        entropy = self.agent.entropy(policy).mean()
        old_log_probs, advantages = rollout.log_probs[index], rollout.advantages[index]
        if h.normalize_advantages:
            advantages = normalize(advantages)
        policy_loss = clipped_surrogate_loss(log_probs, old_log_probs, advantages, h.clip_coef)
        critic_loss = value_loss(
            values, rollout.values[index], rollout.returns[index], h.clip_coef if h.clip_value_loss else None
        )
        loss = policy_loss + h.vf_coef * critic_loss - h.ent_coef * entropy
        approx_kl, clip_fraction = policy_change(log_probs.detach(), old_log_probs, h.clip_coef)
        stats = {"loss": loss, "policy_loss": policy_loss, "value_loss": critic_loss, "entropy": entropy}
        stats = {name: value.detach() for name, value in stats.items()}
        return loss, {**stats, "approx_kl": approx_kl, "clip_fraction": clip_fraction}

    def learn(self, rollout: Rollout) -> dict[str, Tensor]:
        """K epochs over M shuffled minibatches of the rollout; the mean of each statistic over all of them."""
        h = self.hparams
        optimizer = self.optimizers()
        size = len(rollout.advantages)
        history = []
        for _ in range(h.update_epochs):
            for index in torch.randperm(size, device=self.device).split(size // h.num_minibatches):
                loss, stats = self.ppo_loss(rollout, index)
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                self.clip_gradients(optimizer, gradient_clip_val=h.max_grad_norm, gradient_clip_algorithm="norm")
                optimizer.step()
                history.append(torch.stack(list(stats.values())))
        return dict(zip(stats, torch.stack(history).mean(0), strict=True))

    def training_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor | np.ndarray]:
        """One rollout and the updates on it. Returns the loss (for the run's non-finite-loss check) and the
        finished episodes' returns and end steps (for callbacks such as SolvedAt: the PlaysEpisodes contract)."""
        refuse_dataset(batch)
        rollout, (episode_returns, episode_lengths, episode_env_steps) = self.collect_rollout()
        stats = self.learn(rollout)
        if self.hparams.anneal_lr:
            self.lr_schedulers().step()
        env_steps = (self.current_epoch + 1) * self.rollout_env_steps
        if self.current_epoch + 1 >= self.num_rollouts:
            self.trainer.should_stop = True
        if self.loggers:
            metrics = {f"train/{name}": float(value) for name, value in stats.items()}
            metrics["train/lr"] = self.optimizers().optimizer.param_groups[0]["lr"]
            if len(episode_returns):
                metrics["train/episodic_return"] = float(episode_returns.mean())
                metrics["train/episodic_length"] = float(episode_lengths.mean())
            # Straight to the loggers, against environment steps (the x-axis of RL curves): self.log's
            # bookkeeping, made for per-batch metrics, would cost more than a rollout's learning steps.
            for logger in self.loggers:
                logger.log_metrics(metrics, step=env_steps)
        return {"loss": stats["loss"], "episode_returns": episode_returns, "episode_env_steps": episode_env_steps}

    def configure_optimizers(self):
        # fused: one kernel for all parameters; PPO's per-step cost is overhead, not arithmetic.
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, eps=1e-5, fused=True)
        if not self.hparams.anneal_lr:
            return optimizer
        # CleanRL's annealing: the i-th rollout (from 0) learns at lr * (1 - i / num_rollouts).
        schedule = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.0, total_iters=self.num_rollouts)
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def count_throughput(self, batch: Tensor) -> int:
        """Environment steps one training batch (one rollout) represents."""
        return self.rollout_env_steps

    # ---- evaluation --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def greedy_returns(self, seeds: list[int]) -> np.ndarray:
        """Return of one greedy episode (most likely action, or the Gaussian's mean) per seed, played in parallel."""
        envs = make_vector_env(self.hparams.env_id, len(seeds))
        obs, _ = envs.reset(seed=list(seeds))
        returns = np.full(len(seeds), np.nan)
        while np.isnan(returns).any():
            action = self.agent.greedy_action(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
            obs, _, _, _, info = envs.step(self.to_env_action(action))
            if "episode" in info:
                first = info["_episode"] & np.isnan(returns)  # later episodes of the same environment don't count
                returns[first] = info["episode"]["r"][first]
        envs.close()
        return returns

    def evaluate(
        self, datamodule: L.LightningDataModule | None, episodes: int = 20, seed: int = EVAL_SEED
    ) -> dict[str, float]:
        """The figures scripts/evaluate.py prints after the test's: mean and standard deviation of the greedy
        return over `episodes` episodes seeded seed, seed + 1, ... (the environment is the model's own, so the
        DataModule is not needed)."""
        if episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {episodes}")
        returns = self.greedy_returns(list(range(seed, seed + episodes)))
        return {"mean_return": float(returns.mean()), "std_return": float(returns.std()), "episodes": episodes}

    @torch.no_grad()
    def render(self, seed: int = EVAL_SEED) -> list[np.ndarray]:
        """The frames (H, W, 3) uint8 of one greedy episode, for scripts/evaluate.py --video."""
        env = gym.make(self.hparams.env_id, render_mode="rgb_array")
        obs, _ = env.reset(seed=seed)
        frames, done = [env.render()], False
        while not done:
            action = self.agent.greedy_action(torch.as_tensor(obs, dtype=torch.float32, device=self.device)[None])
            obs, _, terminated, truncated, _ = env.step(self.to_env_action(action)[0])
            frames.append(env.render())
            done = terminated or truncated
        env.close()
        return frames

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        refuse_dataset(batch)
        returns = torch.as_tensor(self.greedy_returns(batch.tolist()))
        metrics = {"test/mean_return": returns.mean(), "test/std_return": returns.std(correction=0)}
        self.log_dict(metrics, batch_size=len(batch))
