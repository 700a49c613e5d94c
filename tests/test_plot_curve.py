"""scripts/plot_curve.py: a run's logged metrics read back from its TensorBoard files and placed at their epochs."""

import plot_curve
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from conftest import one_error_line


def write_run(folder, epochs: int = 2, steps_per_epoch: int = 10) -> None:
    """Events as Lightning writes them: `epoch` (0-based) beside every metric at its step, the training loss
    every 5 steps, the validation loss at each epoch's last step, the test loss after the last epoch."""
    writer = SummaryWriter(str(folder))
    for epoch in range(epochs):
        for step in range(epoch * steps_per_epoch + 4, (epoch + 1) * steps_per_epoch, 5):
            writer.add_scalar("train/loss", 1.0 / (step + 1), step)
            writer.add_scalar("epoch", epoch, step)
        writer.add_scalar("val/loss", 0.5 - 0.1 * epoch, (epoch + 1) * steps_per_epoch - 1)
    # The test after fit: Lightning's epoch counter already at the number of epochs, one step on.
    writer.add_scalar("test/loss", 0.3, epochs * steps_per_epoch)
    writer.add_scalar("epoch", epochs, epochs * steps_per_epoch)
    writer.close()


def test_metrics_are_placed_at_their_epochs(tmp_path, script_in_process) -> None:
    write_run(tmp_path / "runs" / "ae" / "version_0")
    result = script_in_process(
        "plot_curve", "runs/ae/version_0", "--tag", "val/loss", "--tag", "train/loss", "--tag", "test/loss",
        "--out", "curve.png",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Validation at the ends of epochs 1 and 2; training at steps 4 and 9 of the first epoch (ends at 9) and
    # 14 and 19 of the second (9 to 19): 4/9 of the first, 1, then 1 + 5/10 and 2. The values are float32.
    assert lines[0] == "runs/ae/version_0 val/loss: 1 -> 0.5, 2 -> 0.4"
    assert lines[1] == "runs/ae/version_0 train/loss: 0.444444 -> 0.2, 1 -> 0.1, 1.5 -> 0.06667, 2 -> 0.05"
    assert lines[2] == "runs/ae/version_0 test/loss: 2 -> 0.3"  # after the 2 epochs trained, not in a third
    assert Image.open(tmp_path / "curve.png").format == "PNG"
    by_step = script_in_process("plot_curve", "runs/ae/version_0", "--tag", "val/loss", "--x", "step")
    assert by_step.stdout.splitlines()[0] == "runs/ae/version_0 val/loss: 9 -> 0.5, 19 -> 0.4"


def test_a_missing_run_or_metric_is_refused_in_one_line(tmp_path, script_in_process) -> None:
    write_run(tmp_path / "run")
    line = one_error_line(script_in_process("plot_curve", "run", "--tag", "val/acc"))
    assert (
        line
        == "plot_curve.py: error: --tag val/acc: run logged no such metric; it logged test/loss, train/loss, val/loss"
    )
    line = one_error_line(script_in_process("plot_curve", "nowhere", "--tag", "val/loss"))
    assert line == (
        "plot_curve.py: error: nowhere holds no TensorBoard event files; pass a run folder such as runs/MODEL/version_0"
    )


def test_ylim_crops_the_vertical_axis(tmp_path, script_in_process) -> None:
    write_run(tmp_path / "run")
    figure = plot_curve.plot({"run val/loss": [(1.0, 0.5), (2.0, 9.0)]}, "epoch", str(tmp_path / "a.png"), (0.2, 0.6))
    assert figure.axes[0].get_ylim() == (0.2, 0.6)
    assert script_in_process("plot_curve", "run", "--tag", "val/loss", "--ylim", "0.2", "0.6").returncode == 0
    line = one_error_line(script_in_process("plot_curve", "run", "--tag", "val/loss", "--ylim", "2", "1"))
    assert line == "plot_curve.py: error: --ylim 2 1: LOW must be below HIGH, e.g. --ylim 1.0 2.0"
