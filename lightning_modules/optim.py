"""What the models' `configure_optimizers` share: the weight-decay parameter groups and the learning-rate
schedules, stepped once per optimiser step."""

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn


def decay_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """Two optimiser groups: the matrices (linear weights, conv kernels, embeddings: ndim >= 2) decayed by
    `weight_decay`, the biases and norm gains (ndim < 2) not, since decay is meant to shrink weight matrices.
    A parameter listed twice (a tied weight) is grouped once."""
    unique = list({id(p): p for p in params}.values())
    return [
        {"params": [p for p in unique if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in unique if p.ndim < 2], "weight_decay": 0.0},
    ]


@dataclass
class WarmupDecay:
    """Multiplier of the base learning rate at optimiser step `step` (counted from 0):

    - warm-up: (step + 1) / warmup_ramp while step < warmup_steps (warmup_ramp defaults to warmup_steps, so
      the ramp reaches 1 at its last step; nanoGPT ramps over warmup_steps + 1 and so never quite reaches 1);
    - then "constant": 1;
    - "cosine": min_ratio + (1 - min_ratio) (1 + cos(pi p)) / 2 with p = (step - decay_start) /
      (decay_end - decay_start) clipped to [0, 1] (Loshchilov & Hutter 2017, eq. 5, without restarts);
    - "step": 0.1 to the number of `milestones` (fractions of decay_end) that step / decay_end has reached
      (He et al. 2016, sec. 4.2).

    With no known end (decay_end infinite, e.g. a time budget) the decay stays at 1. Torch's LinearLR and
    CosineAnnealingLR compute these factors recursively, which drifts in the last bits over thousands of steps,
    so the closed form is used. A plain object: LambdaLR saves its fields in the checkpoint."""

    kind: Literal["constant", "cosine", "step"] = "constant"
    warmup_steps: int = 0
    warmup_ramp: int | None = None
    decay_start: int = 0
    decay_end: float = math.inf
    min_ratio: float = 0.0
    milestones: list[float] = field(default_factory=list)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_ramp or self.warmup_steps)
        if not math.isfinite(self.decay_end) or self.kind == "constant":
            return 1.0
        if self.kind == "cosine":
            progress = min(max((step - self.decay_start) / max(self.decay_end - self.decay_start, 1), 0.0), 1.0)
            return self.min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - self.min_ratio)
        return 0.1 ** sum(min(step / max(self.decay_end, 1), 1.0) >= m for m in self.milestones)


def per_step(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict:
    """The `lr_scheduler` entry of `configure_optimizers` for a schedule stepped after every optimiser step."""
    return {"scheduler": scheduler, "interval": "step"}


def warmup_decay(optimizer: torch.optim.Optimizer, factor: WarmupDecay) -> dict:
    """`factor` as a per-step LambdaLR on `optimizer`, in the form `configure_optimizers` returns."""
    return {"optimizer": optimizer, "lr_scheduler": per_step(torch.optim.lr_scheduler.LambdaLR(optimizer, factor))}


def warmup_decay_over_run(
    optimizer: torch.optim.Optimizer,
    trainer,
    kind: Literal["constant", "cosine", "step"],
    warmup_epochs: float,
    milestones: Iterable[float] = (),
) -> dict:
    """`warmup_decay` for a run of `trainer.max_epochs`: a linear warm-up of `warmup_epochs` (fractions
    allowed), then `kind` over the rest of the run's optimiser steps (none when the run's length is unknown)."""
    total = trainer.estimated_stepping_batches
    steps_per_epoch = total / max(trainer.max_epochs, 1) if math.isfinite(total) else 0
    warmup = round(warmup_epochs * steps_per_epoch)
    return warmup_decay(optimizer, WarmupDecay(kind, warmup, decay_end=float(total), milestones=list(milestones)))


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight matrix is rescaled by the layer's trust ratio
    eta ||w|| / ||g + wd w|| (You et al. 2017, "Large Batch Training of Convolutional Networks", eq. 6 and
    Algorithm 1), so that every layer moves by about the same fraction of its norm whatever the batch size.
    Biases and norm gains (ndim < 2) take plain momentum SGD, as SimCLR excludes them (Chen et al. 2020, B.1)."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 1e-3,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(
                f"LARS needs lr > 0, 0 <= momentum < 1, weight_decay >= 0 and trust_coefficient > 0, got lr={lr}, "
                f"momentum={momentum}, weight_decay={weight_decay}, trust_coefficient={trust_coefficient}"
            )
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "trust_coefficient": trust_coefficient},
        )

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad.clone()
                if p.ndim >= 2:
                    weight_norm, update_norm = p.norm(), update.norm()
                    # A zero norm (a fresh zero layer, a zero gradient) leaves the step as SGD's: no sync, no NaN.
                    ratio = torch.where(
                        (weight_norm > 0) & (update_norm > 0),
                        group["trust_coefficient"] * weight_norm / update_norm,
                        torch.ones_like(weight_norm),
                    )
                    update.mul_(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss
