"""PPO as a Lightning run: rollout shapes, environment steps counted, the stop at total_env_steps, Pendulum,
the same seed giving the same returns, and fit.py's one-rollout run with scripts/evaluate.py on its checkpoint."""

import gymnasium as gym
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from callbacks import SolvedAt
from datamodules.environments import GymDataModule
from lightning_modules.rl.ppo import PPO


class StepCounting(gym.Env):
    """CartPole-sized observations, two actions, episodes of 5 steps; counts every step of every copy."""

    steps = 0
    observation_space = gym.spaces.Box(-1, 1, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), {}

    def step(self, action):
        StepCounting.steps += 1
        self.t += 1
        return self.np_random.uniform(-1, 1, 4).astype(np.float32), float(action), self.t == 5, False, {}


class MultiDiscreteActions(StepCounting):
    action_space = gym.spaces.MultiDiscrete([2, 2])


gym.register("ZooStepCounting-v0", entry_point=StepCounting)
gym.register("ZooMultiDiscrete-v0", entry_point=MultiDiscreteActions)


def quiet_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
    )


def test_rollout_shapes():
    model = PPO(num_envs=3, num_steps=7, num_minibatches=3)
    model.on_train_start()
    rollout, (returns, lengths, ends) = model.collect_rollout()
    model.on_train_end()
    assert rollout.observations.shape == (21, 4) and rollout.observations.dtype == torch.float32
    assert rollout.actions.shape == (21,) and rollout.actions.dtype == torch.long
    for name in ("log_probs", "values", "advantages", "returns"):
        assert getattr(rollout, name).shape == (21,), name
    assert returns.shape == lengths.shape == ends.shape and model.count_throughput(None) == 21
    assert all(0 < end <= 21 for end in ends)  # within this first rollout of 3 x 7 steps


def test_each_rollout_is_num_envs_x_num_steps_env_steps_and_k_x_m_optimizer_steps():
    StepCounting.steps = 0
    model = PPO(env_id="ZooStepCounting-v0", num_envs=3, num_steps=10, update_epochs=2, num_minibatches=5,
                total_env_steps=3 * 3 * 10)  # fmt: skip
    trainer = quiet_trainer(max_epochs=-1)  # the model stops the run after total_env_steps
    trainer.fit(model, datamodule=GymDataModule(eval_episodes=2))
    assert trainer.current_epoch == 3 and trainer.global_step == 3 * 2 * 5
    assert StepCounting.steps == 3 * 3 * 10
    [result] = trainer.test(model, datamodule=GymDataModule(eval_episodes=2), verbose=False)
    assert StepCounting.steps >= 90 + 2 * 5  # the evaluation plays two whole episodes
    assert 0 <= result["test/mean_return"] <= 5 and "test/solved_at_env_steps" not in result  # no threshold


def test_pendulum_trains_with_a_gaussian_policy_and_shared_trunk():
    torch.manual_seed(0)
    model = PPO(env_id="Pendulum-v1", num_envs=2, num_steps=16, num_minibatches=2, shared_trunk=True)
    before = model.agent.log_std.detach().clone()
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, datamodule=GymDataModule(eval_episodes=2))
    assert model.agent.critic_trunk is None and not torch.equal(before, model.agent.log_std)
    [result] = trainer.test(model, datamodule=GymDataModule(eval_episodes=2), verbose=False)
    assert -2000 < result["test/mean_return"] < 0  # 200 steps of Pendulum's costs, each in [-16.3, 0]
    assert "test/solved_at_env_steps" not in result  # Pendulum has no reward_threshold


def test_bad_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="cannot make environment 'NoSuchEnv-v0'"):
        PPO(env_id="NoSuchEnv-v0")
    with pytest.raises(ValueError, match="num_minibatches .* must divide"):
        PPO(num_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(ValueError, match="Discrete or 1-D Box actions"):
        PPO(env_id="ZooMultiDiscrete-v0")
    with pytest.raises(ValueError, match="flat observation vector"):
        PPO(env_id="Blackjack-v1")


def short_run(seed: int) -> tuple[dict, list[float], dict]:
    """Two rollouts of 4 x 16 steps seeded like fit.py's --seed: test metrics, training returns, weights."""
    L.seed_everything(seed)
    model = PPO(num_steps=16, num_minibatches=2)
    trainer = quiet_trainer(max_epochs=2)
    returns = []
    original = model.collect_rollout

    def recording_rollout():
        rollout, episodes = original()
        returns.append(episodes[0].tolist())
        return rollout, episodes

    model.collect_rollout = recording_rollout
    trainer.fit(model, datamodule=GymDataModule(eval_episodes=3))
    [result] = trainer.test(model, datamodule=GymDataModule(eval_episodes=3), verbose=False)
    return result, returns, model.state_dict()


def test_same_seed_same_returns():
    first, second, other = short_run(3), short_run(3), short_run(4)
    assert first[1] == second[1] and len(first[1]) == 2 and all(first[1])  # every rollout finished episodes
    assert first[0]["test/mean_return"] == second[0]["test/mean_return"]
    for name, value in first[2].items():
        torch.testing.assert_close(second[2][name], value, rtol=0, atol=0, msg=name)
    assert other[1] != first[1]  # and the seed matters


def test_fit_then_evaluate_script_prints_returns_and_saves_a_gif(tmp_path, fit_in_process, script_in_process):
    """One rollout through fit.py (the smoke run: a fast_dev_run would save no checkpoint), then evaluate.py."""
    args = ("--model", "ppo", "--trainer.max_epochs", "1", "--model.num_steps", "32", "--data.eval_episodes", "3",
            "--trainer.enable_progress_bar", "false")  # fmt: skip
    fitted = fit_in_process(*args)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert "ppo on GymDataModule" in fitted.stdout and "test/mean_return = " in fitted.stdout
    checkpoint = str(tmp_path / "runs/ppo/version_0/checkpoints/last.ckpt")
    video = tmp_path / "episode.gif"
    evaluated = script_in_process("evaluate", "--ckpt", checkpoint, "--episodes", "4", "--video", str(video))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    printed = evaluated.stdout
    assert "mean_return = " in printed and "std_return = " in printed and "episodes = 4" in printed
    with Image.open(video) as gif:
        assert gif.n_frames > 1 and gif.size == (600, 400)  # CartPole's rgb_array frames
    refused = script_in_process("evaluate", "--ckpt", checkpoint, "--video", str(tmp_path / "x.mp4"))
    assert refused.returncode == 2
    assert "evaluate.py: error: --video writes a GIF" in refused.stderr


def test_solved_at_marks_the_first_window_of_episodes_whose_mean_reaches_the_threshold():
    L.seed_everything(0)
    model = PPO(num_steps=32, num_minibatches=2)
    recorded = []

    class Recording(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            recorded.append((outputs["episode_returns"], outputs["episode_env_steps"]))

    window, threshold = 4, 25.0
    solved, default = SolvedAt(threshold=threshold, window=window), SolvedAt()
    trainer = quiet_trainer(max_epochs=4, callbacks=[Recording(), solved, default])
    trainer.fit(model, datamodule=GymDataModule(eval_episodes=2))
    returns, ends = (np.concatenate(parts) for parts in zip(*recorded, strict=True))
    # CartPole's returns are whole numbers, so the window sums (and mean >= threshold) are exact.
    sums = np.convolve(returns, np.ones(window), mode="valid")  # sums[i]: episodes i .. i + window - 1
    reached = np.flatnonzero(sums >= threshold * window)
    assert len(reached) and reached[0] > 0  # the fixed seed's run crosses the threshold, not at once
    assert solved.env_steps == ends[reached[0] + window - 1] and solved.seconds > 0
    assert default.threshold == 475 and default.env_steps is None  # CartPole-v1's own threshold: not solved yet
    rollout_ends = [(epoch + 1) * 4 * 32 for epoch, (r, _) in enumerate(recorded) for _ in r]
    assert all(0 < end <= last for end, last in zip(ends, rollout_ends, strict=True))
