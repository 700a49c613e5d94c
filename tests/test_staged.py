"""The staged network: a frozen stage stays bit-equal while the next trains and is out of the optimizer, stages
switch at epoch boundaries, the joint network trains everything, and the test logs each stage's accuracy."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_modules.experiments.staged import StagedNetwork

SHAPE = (1, 4, 4)


class Watch(L.Callback):
    """At the first step of each epoch: the optimiser's parameters, the stage and a copy of every weight."""

    def __init__(self) -> None:
        self.optimised, self.stages, self.weights = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.optimised.append({id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]})
            self.stages.append(int(pl_module.stage))
            self.weights.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def train(model: StagedNetwork, epochs: int) -> Watch:
    torch.manual_seed(0)
    data = TensorDataset(torch.rand(32, *SHAPE), torch.randint(0, 3, (32,)))
    watch = Watch()
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[watch],
    )  # fmt: skip
    trainer.fit(model, DataLoader(data, batch_size=8))
    return watch


def parameter_ids(*modules) -> set[int]:
    return {id(p) for module in modules for p in module.parameters()}


@pytest.mark.parametrize("arrangement", ["series", "parallel"])
def test_frozen_stages_stay_bit_equal_and_out_of_the_optimizer(arrangement):
    torch.manual_seed(0)
    model = StagedNetwork(SHAPE, 3, stages=3, arrangement=arrangement, width=8, depth=2, epochs_per_stage=2)
    images = torch.rand(5, *SHAPE)
    watch = train(model, epochs=6)
    assert watch.stages == [0, 0, 1, 1, 2, 2]
    for epoch, stage in enumerate(watch.stages):
        assert watch.optimised[epoch] == parameter_ids(model.bodies[stage], model.heads[stage])
    end = model.state_dict()
    for stage in range(3):
        trained_until = watch.weights[2 * stage + 2] if stage < 2 else end  # the weights when the next stage began
        for name, value in trained_until.items():
            if name.startswith((f"bodies.{stage}.", f"heads.{stage}.")):
                assert torch.equal(end[name], value), name  # never touched again: the same bits
                assert not torch.equal(watch.weights[2 * stage][name], value), name  # but trained in its stage
    assert model.heads[1].in_features == (8 if arrangement == "series" else 16)
    assert model.logits(images, 0).shape == model.logits(images, 2).shape == (5, 3)


def test_the_joint_network_trains_every_body_with_one_head():
    torch.manual_seed(0)
    model = StagedNetwork(SHAPE, 3, stages=3, width=8, joint=True)
    watch = train(model, epochs=1)
    assert len(model.heads) == 1 and watch.stages == [2]
    assert watch.optimised[0] == parameter_ids(model)


def test_the_test_logs_each_stages_accuracy(data_root, fit_in_process):
    result = fit_in_process(
        "--model", "staged", "--data.root", str(data_root), "--data.batch_size", "16",
        "--model.stages", "2", "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc_stage_0 = " in result.stdout and "test/acc_stage_1 = " in result.stdout


@pytest.mark.parametrize("flags", [(), ("--model.joint", "true"), ("--model.arrangement", "parallel")])
def test_fast_dev_run(flags, data_root, fit_in_process):
    result = fit_in_process(
        "--model", "staged", "--trainer.fast_dev_run", "true", "--data.root", str(data_root),
        "--data.batch_size", "16", *flags,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc = " in result.stdout


def test_bad_stage_count_is_one_line(data_root, fit_in_process):
    from conftest import one_error_line

    result = fit_in_process("--model", "staged", "--data.root", str(data_root), "--model.stages", "0")
    assert "--model.stages must be at least 1, got 0" in one_error_line(result)
