"""PhaseSwitch: it freezes exactly the inactive groups, switches on plateau and on schedule, and the frozen
parameters do not move, whatever the optimiser's weight decay and momentum."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks.phase_switch import PhaseSwitch

GROUPS = {"early": ["encoder"], "late": ["decoder.0", "decoder.2"]}


class TwoPartRegressor(L.LightningModule):
    """Any model, not a classifier: PhaseSwitch knows parameters only by name. It can keep zeroed gradients
    instead of dropping them, the case in which weight decay and momentum would move frozen weights."""

    def __init__(self, optimizer: str = "sgd", grads_to_none: bool = True) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
        self.scale = nn.Parameter(torch.ones(()))  # in no group: always trains
        self.optimizer, self.grads_to_none = optimizer, grads_to_none

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = ((self.decoder(self.encoder(x)) * self.scale - y) ** 2).mean()
        self.log("train/loss", loss, on_epoch=True)
        return loss

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad(set_to_none=self.grads_to_none)

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=0.1)
        return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=0.1)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8)


class Snapshots(L.Callback):
    """The parameters at the start and end of every training epoch."""

    def __init__(self) -> None:
        self.start, self.end = [], []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    def on_train_epoch_end(self, trainer, pl_module):
        self.end.append({n: p.detach().clone() for n, p in pl_module.named_parameters()})


def in_group(name: str, group: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in GROUPS[group])


@pytest.mark.parametrize(("optimizer", "grads_to_none"), [("sgd", True), ("sgd", False), ("adamw", False)])
def test_frozen_groups_do_not_move_under_decay_and_momentum(optimizer, grads_to_none):
    torch.manual_seed(0)
    model = TwoPartRegressor(optimizer, grads_to_none)
    snapshots = Snapshots()
    switch = PhaseSwitch(GROUPS, monitor=None, epochs_per_phase=1)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[switch, snapshots],
    )  # fmt: skip
    trainer.fit(model, loader())
    for epoch, active in enumerate(["early", "late", "early"]):
        for name, before in snapshots.start[epoch].items():
            moved = not torch.equal(before, snapshots.end[epoch][name])
            frozen = not in_group(name, active) and (in_group(name, "early") or in_group(name, "late"))
            assert moved != frozen, (epoch, name, moved)
    assert all(p.requires_grad for p in model.parameters())  # handed back as found


def test_freezes_exactly_the_inactive_groups():
    model = TwoPartRegressor()
    switch = PhaseSwitch(GROUPS, monitor=None, epochs_per_phase=1)
    switch.on_fit_start(None, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"encoder.0.weight", "encoder.0.bias", "scale"}
    switch.active = 1
    switch.apply()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias", "scale"}


def run_epochs(switch: PhaseSwitch, losses: list[float | None]) -> list[int]:
    """Drive the epoch-end hook with these monitored values; the active group after each epoch."""
    model = TwoPartRegressor()
    model.log = lambda *args, **kwargs: None
    switch.on_fit_start(None, model)
    active = []
    for epoch, loss in enumerate(losses):
        metrics = {} if loss is None else {"val/loss": torch.tensor(loss)}
        switch.on_train_epoch_end(SimpleNamespace(callback_metrics=metrics, current_epoch=epoch), model)
        active.append(switch.active)
    return active


def test_switches_when_the_monitored_loss_plateaus():
    switch = PhaseSwitch(GROUPS, monitor="val/loss", patience=2, min_delta=0.01)
    # 1.0 best, 0.995 is not better by min_delta (wait 1), 0.9 better (wait 0), 0.95 and 0.91 not (wait 1, 2).
    assert run_epochs(switch, [1.0, 0.995, 0.9, 0.95, 0.91, 0.5, 0.5, 0.5]) == [0, 0, 0, 0, 1, 1, 1, 0]


def test_switches_on_schedule_cycling_round():
    three = {"a": ["encoder"], "b": ["decoder.0"], "c": ["decoder.2"]}
    switch = PhaseSwitch(three, monitor=None, epochs_per_phase=2)
    assert run_epochs(switch, [None] * 7) == [0, 1, 1, 2, 2, 0, 0]


def test_schedule_or_plateau_whichever_comes_first():
    switch = PhaseSwitch(GROUPS, monitor="val/loss", patience=1, epochs_per_phase=3)
    assert run_epochs(switch, [1.0, 0.9, 0.8, 0.7, 0.7]) == [0, 0, 1, 1, 0]


def test_state_survives_a_checkpoint():
    switch = PhaseSwitch(GROUPS, monitor="val/loss", patience=3)
    run_epochs(switch, [1.0, 1.0])
    restored = PhaseSwitch(GROUPS, monitor="val/loss", patience=3)
    restored.load_state_dict(switch.state_dict())
    assert (restored.active, restored.best, restored.wait) == (0, 1.0, 1)


def test_bad_groups_and_monitor_are_clear_errors():
    model = TwoPartRegressor()
    with pytest.raises(ValueError, match="in groups"):
        PhaseSwitch({"a": ["encoder"], "b": ["encoder.0"]}, monitor=None, epochs_per_phase=1).on_fit_start(None, model)
    with pytest.raises(ValueError, match="matches no parameter"):
        PhaseSwitch({"a": ["encoder"], "b": ["decoder.9"]}, monitor=None, epochs_per_phase=1).on_fit_start(None, model)
    with pytest.raises(ValueError, match="at least two groups"):
        PhaseSwitch({"a": ["encoder"]})
    with pytest.raises(ValueError, match="does not log"):
        run_epochs(PhaseSwitch(GROUPS, monitor="val/acc"), [1.0])
