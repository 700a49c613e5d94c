"""Train one group of parameters at a time, freezing the rest, and move on when the current phase stalls."""

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info


def owns(prefix: str, name: str) -> bool:
    """Whether the parameter `name` lies under the module prefix (whole name components only: "stages.1"
    owns "stages.1.0.conv1.weight", not "stages.10.conv1.weight")."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


class PhaseSwitch(L.Callback):
    """Splits the model's parameters into named groups by module-name prefix and trains one group at a time,
    cycling round. The others are frozen: `requires_grad` off and their gradients dropped before every
    optimiser step, so that no optimiser touches them (torch optimisers skip parameters whose grad is None:
    no weight decay, no momentum, no state update). Parameters in no group always train. The phase moves on
    when `monitor` has not improved by `min_delta` for `patience` epochs, or after `epochs_per_phase` epochs,
    whichever comes first. Logs `phase/active_group` (the index into `groups`) each epoch."""

    def __init__(
        self,
        groups: dict[str, list[str]],
        monitor: str | None = "val/loss",
        patience: int = 2,
        min_delta: float = 0.0,
        epochs_per_phase: int | None = None,
    ) -> None:
        """
        Args:
            groups: group name -> module-name prefixes, e.g. {"early": ["backbone.stem", "backbone.stages.0"],
                "late": ["backbone.stages.1", "backbone.stages.2", "backbone.head"]}; trained in this order.
            monitor: logged metric (lower is better) whose plateau ends a phase; None: schedule only.
            patience: epochs without improvement before the switch.
            min_delta: smallest decrease that counts as an improvement.
            epochs_per_phase: switch after this many epochs regardless; None: on plateau only.
        """
        if len(groups) < 2:
            raise ValueError("PhaseSwitch needs at least two groups of module-name prefixes, e.g. {a: [x], b: [y]}")
        if monitor is None and epochs_per_phase is None:
            raise ValueError("PhaseSwitch needs a monitor, epochs_per_phase, or both")
        if epochs_per_phase is not None and epochs_per_phase < 1:
            raise ValueError(f"PhaseSwitch epochs_per_phase must be at least 1, got {epochs_per_phase}")
        self.groups = {name: list(prefixes) for name, prefixes in groups.items()}
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.epochs_per_phase = epochs_per_phase
        self.active, self.best, self.wait, self.epochs_in_phase = 0, math.inf, 0, 0
        self.members: dict[str, list[torch.nn.Parameter]] = {}

    @property
    def active_group(self) -> str:
        return list(self.groups)[self.active]

    def assign(self, model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
        """The trainable parameters of each group; a parameter claimed by two groups or a group with none is
        an error."""
        members = {group: [] for group in self.groups}
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue  # frozen by the user: stays frozen
            claims = [g for g, prefixes in self.groups.items() if any(owns(p, name) for p in prefixes)]
            if len(claims) > 1:
                raise ValueError(f"PhaseSwitch: parameter {name} is in groups {claims}; make the prefixes disjoint")
            if claims:
                members[claims[0]].append(parameter)
        empty = [group for group, params in members.items() if not params]
        if empty:
            raise ValueError(
                f"PhaseSwitch group {empty[0]!r} ({self.groups[empty[0]]}) matches no parameter; "
                "prefixes are module names such as backbone.stages.0"
            )
        return members

    def apply(self) -> None:
        for group, params in self.members.items():
            for parameter in params:
                parameter.requires_grad_(group == self.active_group)

    def frozen(self):
        for group, params in self.members.items():
            if group != self.active_group:
                yield from params

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.members = self.assign(pl_module)
        self.apply()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # A gradient left from before the switch (or zeroed rather than dropped) would still bring weight decay
        # and momentum; None makes the optimiser skip the parameter.
        for parameter in self.frozen():
            parameter.grad = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("phase/active_group", float(self.active))
        self.epochs_in_phase += 1
        switch = self.epochs_per_phase is not None and self.epochs_in_phase >= self.epochs_per_phase
        if self.monitor is not None and not switch:
            value = trainer.callback_metrics.get(self.monitor)
            if value is None:
                raise ValueError(
                    f"PhaseSwitch monitors {self.monitor!r}, which the model does not log; "
                    f"pick one of {sorted(trainer.callback_metrics)} or set monitor null with epochs_per_phase"
                )
            value = float(value)  # once per epoch
            if value < self.best - self.min_delta:
                self.best, self.wait = value, 0
            else:
                self.wait += 1
            switch = self.wait >= self.patience
        if switch:
            self.active = (self.active + 1) % len(self.groups)
            self.best, self.wait, self.epochs_in_phase = math.inf, 0, 0
            self.apply()
            rank_zero_info(f"PhaseSwitch: from epoch {trainer.current_epoch + 1} training group {self.active_group!r}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for params in self.members.values():  # leave the model as it was found
            for parameter in params:
                parameter.requires_grad_(True)

    def state_dict(self) -> dict:
        return {"active": self.active, "best": self.best, "wait": self.wait, "epochs_in_phase": self.epochs_in_phase}

    def load_state_dict(self, state_dict: dict) -> None:
        self.active, self.best = state_dict["active"], state_dict["best"]
        self.wait, self.epochs_in_phase = state_dict["wait"], state_dict["epochs_in_phase"]
