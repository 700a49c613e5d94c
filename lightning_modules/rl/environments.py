"""The environments the RL family plays: gymnasium's, vectorised in this process. The model builds its own
(its network's shape depends on the environment, and a checkpoint must be able to rebuild it alone)."""

import gymnasium as gym

EVAL_SEED = 100_000  # seed of the first evaluation episode: far from the training seeds


def make_vector_env(env_id: str, num_envs: int) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` stepped in this process, recording episode returns and lengths in
    `info["episode"]`. Same-step autoreset: when an episode ends, `step` already returns the first
    observation of the next one and keeps the last one in `info["final_obs"]`, which a truncated
    episode needs for its bootstrap value."""
    try:
        envs = gym.make_vec(
            env_id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
        )
    except gym.error.Error as error:
        raise ValueError(
            f"cannot make environment {env_id!r} ({error}); pass a gymnasium id such as CartPole-v1 or Pendulum-v1"
        ) from None
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)
