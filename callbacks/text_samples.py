"""Write a few samples of a text model to TensorBoard while it trains."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_modules.protocols import GeneratesText, require


class TextSamples(L.Callback):
    """Every `every_n_steps` optimiser steps and at the end of training (however short), continue `prompt`
    with the model's `generate` and log the texts under `samples` in TensorBoard. Sampling draws from its own
    generator, so it does not change the training run's random numbers; without a TensorBoard logger
    (benchmarks, smoke tests) it does nothing."""

    def __init__(
        self,
        every_n_steps: int = 500,
        prompt: str = "\n",
        num_samples: int = 2,
        max_new_tokens: int = 300,
        temperature: float = 0.8,
        top_k: int | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: log samples each time the global step is a multiple of this.
            prompt: the text every sample starts from (its characters must be in the vocabulary).
            num_samples: samples per logging step.
            max_new_tokens: characters generated per sample.
            temperature: softmax temperature (0 is greedy).
            top_k: sample among the k likeliest characters only; None keeps all.
            seed: seed of the sampling generator.
        """
        if every_n_steps < 1:
            raise ValueError(f"TextSamples every_n_steps must be at least 1, got {every_n_steps}")
        self.every_n_steps, self.prompt, self.num_samples = every_n_steps, prompt, num_samples
        self.max_new_tokens, self.temperature, self.top_k, self.seed = max_new_tokens, temperature, top_k, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        require(pl_module, GeneratesText, "TextSamples")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if trainer.global_step % self.every_n_steps == 0:
            self.log_samples(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # However short the run, it ends with samples (unless the last step already wrote them).
        if trainer.global_step % self.every_n_steps:
            self.log_samples(trainer, pl_module)

    def log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log `num_samples` continuations of the prompt under `samples` at the current global step."""
        step = trainer.global_step
        if not trainer.is_global_zero or not isinstance(trainer.logger, TensorBoardLogger):
            return
        datamodule = trainer.datamodule
        prompt = datamodule.encode(self.prompt).to(pl_module.device).expand(self.num_samples, -1)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed + step)
        was_training = pl_module.training
        pl_module.eval()
        tokens = pl_module.generate(prompt, self.max_new_tokens, self.temperature, self.top_k, generator=generator)
        pl_module.train(was_training)
        # TensorBoard renders text as Markdown: indent by four spaces to keep the line breaks (a code block).
        texts = ["    " + datamodule.decode(row).replace("\n", "\n    ") for row in tokens]
        trainer.logger.experiment.add_text("samples", "\n\n---\n\n".join(texts), global_step=step)
