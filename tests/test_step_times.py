"""callbacks/step_times.py: one duration per training batch, the first apart, the steady state as the median of
the rest (on a fake clock, so the figures are exact)."""

from types import SimpleNamespace

import lightning as L
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from callbacks import step_times
from callbacks.step_times import StepTimes


def test_first_and_steady_come_from_the_clock(monkeypatch) -> None:
    # Start and end readings of six batches: durations 5 (the compile), 1, 1, 1.5, 2, 1.
    readings = iter([0, 5, 10, 11, 20, 21, 30, 31.5, 40, 42, 50, 51])
    monkeypatch.setattr(step_times.time, "perf_counter", lambda: next(readings))
    clock, module = StepTimes(warmup=3), SimpleNamespace(device=torch.device("cpu"))
    for index in range(6):
        clock.on_train_batch_start(None, module, None, index)
        clock.on_train_batch_end(None, module, None, None, index)
    assert clock.seconds == [5, 1, 1, 1.5, 2, 1]
    assert clock.first == 5 and clock.steady == 1.5  # the median of 1.5, 2, 1


def test_a_run_gets_one_time_per_training_batch(tmp_path) -> None:
    clock = StepTimes()
    trainer = L.Trainer(max_steps=5, limit_val_batches=0, callbacks=[clock], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(BoringModel())
    assert len(clock.seconds) == 5 and all(s > 0 for s in clock.seconds)
