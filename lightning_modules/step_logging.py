"""Which training steps the logger writes, so that per-step metrics are computed and logged only there."""

import lightning as L


def writes_step_metrics(trainer: L.Trainer) -> bool:
    """Whether the logger will write the metrics logged in the current training step.

    Lightning writes step metrics when (optimiser steps so far + 1) is a multiple of `log_every_n_steps`
    (it counts the step under way); a value logged at any other step is never written, yet each `self.log`
    costs bookkeeping, so a model with a cheap step logs only at these steps.
    """
    every = trainer.log_every_n_steps
    return bool(every) and (trainer.global_step + 1) % every == 0
