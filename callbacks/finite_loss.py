"""Stop a run whose training loss turned NaN or infinite, naming the step, instead of training on garbage."""

import lightning as L
import torch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class FiniteLossCheck(L.Callback):
    """Records the first step whose loss is not finite on the loss's own device, and reads that record back
    only every `check_every_n_steps` steps, so it adds no host synchronisation to ordinary steps."""

    def __init__(self, check_every_n_steps: int = 25) -> None:
        self.check_every_n_steps = check_every_n_steps
        self._first_bad_step: torch.Tensor | None = None
        self._step = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._step = trainer.global_step  # the step the module sees as self.global_step in training_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return  # manual optimisation: the module returns nothing
        step = self._step
        if self._first_bad_step is None:
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        is_bad = ~torch.isfinite(loss.detach()).all()
        self._first_bad_step = torch.where(is_bad & (self._first_bad_step < 0), step, self._first_bad_step)
        if step % self.check_every_n_steps == 0:
            self._raise_if_bad(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: L.Trainer) -> None:
        if self._first_bad_step is None:
            return
        step = int(self._first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at step {step} (epoch {trainer.current_epoch}); "
                "lower the learning rate (--model.lr), clip gradients (--trainer.gradient_clip_val 1.0), "
                "or check the data"
            )
