"""The actor-critic network of PPO: an MLP policy (categorical or diagonal Gaussian) and an MLP value function."""

import math

import gymnasium as gym
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Normal


def orthogonal_linear(in_features: int, out_features: int, gain: float = math.sqrt(2)) -> nn.Linear:
    """Orthogonal weights and zero biases: the initialisation of the PPO paper's code (Engstrom et al. 2020 show
    it matters). Hidden layers use gain sqrt(2), the policy head 0.01 (a near-uniform first policy), the value
    head 1."""
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def mlp_trunk(in_features: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        orthogonal_linear(in_features, hidden_dim), nn.Tanh(), orthogonal_linear(hidden_dim, hidden_dim), nn.Tanh()
    )


class ActorCritic(nn.Module):
    """pi(a|s) and V(s) from the flat observation vector of a gymnasium environment."""

    def __init__(
        self, observation_space: gym.Space, action_space: gym.Space, hidden_dim: int = 64, shared_trunk: bool = False
    ) -> None:
        """
        Args:
            observation_space: a 1-D Box.
            action_space: Discrete (categorical policy) or a 1-D Box (diagonal Gaussian, state-independent std).
            hidden_dim: width of the two tanh hidden layers.
            shared_trunk: actor and critic share their hidden layers (one trunk, two heads).
        """
        super().__init__()
        if not (isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1):
            raise ValueError(f"ppo needs a flat observation vector, got {observation_space}; pick e.g. CartPole-v1")
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            action_dim, self.action_shape, self.action_dtype = int(action_space.n), (), torch.long
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            action_dim, self.action_shape, self.action_dtype = action_space.shape[0], action_space.shape, torch.float32
        else:
            raise ValueError(f"ppo needs Discrete or 1-D Box actions, got {action_space}; pick e.g. Pendulum-v1")
        self.observation_shape = observation_space.shape
        in_features = observation_space.shape[0]
        self.actor_trunk = mlp_trunk(in_features, hidden_dim)
        self.critic_trunk = None if shared_trunk else mlp_trunk(in_features, hidden_dim)
        self.actor_head = orthogonal_linear(hidden_dim, action_dim, gain=0.01)
        self.critic_head = orthogonal_linear(hidden_dim, 1, gain=1.0)
        self.log_std = None if self.discrete else nn.Parameter(torch.zeros(action_dim))

    def _distribution(self, head: Tensor) -> Distribution:
        # validate_args=False: the checks cost more than the tiny network in the rollout loop.
        if self.discrete:
            return Categorical(logits=head, validate_args=False)
        return Normal(head, self.log_std.exp().expand_as(head), validate_args=False)

    def policy(self, observations: Tensor) -> Distribution:
        return self._distribution(self.actor_head(self.actor_trunk(observations)))

    def act(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """A sampled action and its log-probability, for the rollout loop. Categorical actions are drawn by the
        Gumbel-max trick, argmax(logits + Gumbel noise), which samples the same distribution as
        torch.multinomial at a fraction of its per-call cost on a handful of rows."""
        head = self.actor_head(self.actor_trunk(observations))
        if self.discrete:
            gumbel = -torch.empty_like(head).exponential_().log()
            action = (head + gumbel).argmax(-1)
            return action, head.gather(-1, action[..., None]).squeeze(-1) - head.logsumexp(-1)
        policy = self._distribution(head)
        action = policy.sample()
        return action, self.log_prob(policy, action)

    def value(self, observations: Tensor) -> Tensor:
        trunk = self.actor_trunk if self.critic_trunk is None else self.critic_trunk
        return self.critic_head(trunk(observations)).squeeze(-1)

    def forward(self, observations: Tensor) -> tuple[Distribution, Tensor]:
        """The policy and the value, the shared trunk evaluated once."""
        actor_features = self.actor_trunk(observations)
        critic_features = actor_features if self.critic_trunk is None else self.critic_trunk(observations)
        return self._distribution(self.actor_head(actor_features)), self.critic_head(critic_features).squeeze(-1)

    def log_prob(self, policy: Distribution, actions: Tensor) -> Tensor:
        """log pi(a|s), summed over the independent dimensions of a Gaussian action."""
        log_prob = policy.log_prob(actions)
        return log_prob if self.discrete else log_prob.sum(-1)

    def entropy(self, policy: Distribution) -> Tensor:
        entropy = policy.entropy()
        return entropy if self.discrete else entropy.sum(-1)

    def greedy_action(self, observations: Tensor) -> Tensor:
        """The most likely action, or the Gaussian's mean: the deterministic policy that is evaluated."""
        head = self.actor_head(self.actor_trunk(observations))
        return head.argmax(-1) if self.discrete else head
