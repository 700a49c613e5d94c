"""Callbacks: the cross-cutting experiments and checks, one file each."""

from callbacks.finite_loss import FiniteLossCheck, NonFiniteLossError
from callbacks.rng_state import RestoreRNGState
from callbacks.solved_at import SolvedAt
from callbacks.step_times import StepTimes

__all__ = ["FiniteLossCheck", "NonFiniteLossError", "RestoreRNGState", "SolvedAt", "StepTimes"]
