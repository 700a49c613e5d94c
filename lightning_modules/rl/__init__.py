"""Reinforcement learning: PPO with its actor-critic network."""
