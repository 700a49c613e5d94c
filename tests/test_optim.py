"""The shared optimiser helpers: each schedule, as the models configure it, against the closed form of its paper
(or nanoGPT's code) written out independently, and the weight-decay groups."""

import io
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_modules.blocks.small_nets import MLP
from lightning_modules.classifiers.classifier import ImageClassifier
from lightning_modules.language.gpt import GPT
from lightning_modules.optim import WarmupDecay, decay_groups, warmup_decay

# The schedules are evaluated in double precision, the references by other but equivalent formulas: they differ
# by a few rounding errors (~1e-16 relative), so 1e-12 is far below any real difference between schedules.
EXACT = 1e-12


def stepped_lrs(configured: dict, steps: int) -> list[float]:
    """The learning rate of the first group at optimiser steps 0, 1, ..., steps - 1, as Lightning steps it."""
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert configured["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def configured_with(model, **trainer_facts) -> dict:
    model._trainer = SimpleNamespace(**trainer_facts)  # what configure_optimizers reads from the Trainer
    return model.configure_optimizers()


def test_classifier_cosine_with_warmup():
    model = ImageClassifier(MLP, lr=0.5, schedule="cosine", warmup_epochs=1)
    lrs = stepped_lrs(configured_with(model, estimated_stepping_batches=100, max_epochs=10), 100)
    # Linear warm-up over the first epoch (10 steps), then eq. 5 of Loshchilov & Hutter 2017 with eta_min 0,
    # T_max the whole run (100 steps) and T_cur the step.
    want = [0.5 * (s + 1) / 10 if s < 10 else 0.5 * 0.5 * (1 + math.cos(s / 100 * math.pi)) for s in range(100)]
    assert lrs == pytest.approx(want, rel=EXACT, abs=EXACT)


def test_classifier_step_schedule_and_time_budget():
    model = ImageClassifier(MLP, optimizer="sgd", lr=0.1, schedule="step", milestones=[0.5, 0.75])
    lrs = stepped_lrs(configured_with(model, estimated_stepping_batches=80, max_epochs=4), 80)
    # He et al. 2016, sec. 4.2: the rate divided by 10 at half and at three quarters of the run (steps 40, 60).
    want = [0.1 * 0.1 ** ((s >= 40) + (s >= 60)) for s in range(80)]
    assert lrs == pytest.approx(want, rel=EXACT)
    budget = ImageClassifier(MLP, lr=0.1, schedule="cosine")
    lrs = stepped_lrs(configured_with(budget, estimated_stepping_batches=math.inf, max_epochs=-1), 5)
    assert lrs == [0.1] * 5  # a time budget has no known end: no decay


def test_gpt_schedule_matches_nanogpt():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 20, 200
    model = GPT(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, lr=lr, min_lr=min_lr, warmup_steps=warmup)
    lrs = stepped_lrs(configured_with(model, max_steps=decay, estimated_stepping_batches=math.inf), 250)

    def nanogpt_lr(it: int) -> float:  # nanoGPT train.py get_lr, written out independently
        if it < warmup:
            return lr * (it + 1) / (warmup + 1)
        if it > decay:
            return min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay - warmup)))
        return min_lr + coeff * (lr - min_lr)

    assert lrs == pytest.approx([nanogpt_lr(it) for it in range(250)], rel=EXACT)


def test_linear_warmup_of_the_ddpm():
    # Ho et al.'s 5000-step warm-up, here 7: (step + 1) / 7 until it reaches 1, then 1.
    factor = WarmupDecay("constant", warmup_steps=7)
    assert [factor(s) for s in range(12)] == pytest.approx([min(1.0, (s + 1) / 7) for s in range(12)], rel=EXACT)
    assert [WarmupDecay("constant", warmup_steps=0)(s) for s in range(3)] == [1.0, 1.0, 1.0]


def test_schedule_state_loads_with_weights_only():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2, 2))], lr=1.0)
    factor = WarmupDecay("step", warmup_steps=3, decay_end=50.0, milestones=[0.5])
    scheduler = warmup_decay(optimizer, factor)["lr_scheduler"]["scheduler"]
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["lr_lambdas"][0]["milestones"] == [0.5] and state["lr_lambdas"][0]["warmup_steps"] == 3


def test_decay_groups_split_matrices_from_vectors_and_count_tied_weights_once():
    embedding = nn.Embedding(5, 4)
    head = nn.Linear(4, 5, bias=False)
    head.weight = embedding.weight  # tied
    net = nn.ModuleDict({"embedding": embedding, "conv": nn.Conv2d(1, 2, 3), "norm": nn.LayerNorm(4), "head": head})
    listed = [*net.embedding.parameters(), *net.conv.parameters(), *net.norm.parameters(), *net.head.parameters()]
    decayed, plain = decay_groups(listed, 0.1)
    assert [tuple(p.shape) for p in decayed["params"]] == [(5, 4), (2, 1, 3, 3)]
    assert [tuple(p.shape) for p in plain["params"]] == [(2,), (4,), (4,)]  # conv bias, norm gain and bias
    assert (decayed["weight_decay"], plain["weight_decay"]) == (0.1, 0.0)
