"""scripts/benchmark.py (its main, in this process) runs the configured model and writes the documented JSON row
(no timing asserted)."""

import json

import pytest

from conftest import one_error_line


def test_benchmark_writes_one_row_with_the_model_only_throughput(data_root, tmp_path, script_in_process):
    out = tmp_path / "row.json"
    # 10 importance samples for the VAE's test -log p(x), not the config's 1000 decoder passes per image.
    result = script_in_process(
        "benchmark", "vae", "--steps", "3", "--data.root", str(data_root), "--data.batch_size", "16",
        "--model-only-steps", "3", "--json", str(out), "--model.iwae_samples", "10",
        "--peak-seconds", "0.1", "--peak-size", "64",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(out.read_text())
    assert {"model", "dataset", "params", "epochs", "seconds", "samples_per_s", "metric", "value"} <= row.keys()
    assert row["model"] == "vae" and row["dataset"] == "MNIST" and row["steps"] == 3
    assert row["metric"] == "test_neg_elbo_nats" and row["value"] > 0 and row["samples_per_s"] > 0
    encoder, heads, decoder = 784 * 400 + 400, 2 * (400 * 20 + 20), (20 * 400 + 400) + (400 * 784 + 784)
    assert row["params"] == encoder + heads + decoder
    assert "| vae | MNIST |" in result.stdout
    # Three steps, all within StepTimes' three warm-up batches: the first is timed, no steady state.
    assert row["first_step_s"] > 0 and row["steady_step_s"] is None
    assert row["model_only_per_s"] > 0  # the VAE's training_step reads self.trainer: it ran under the stand-in
    # The row's rates are rounded to 0.1 and the ratio (of the unrounded rates) to 0.001: recomputed from the
    # rounded rates it may differ by their relative rounding errors plus the ratio's own.
    full, alone, ratio = row["samples_per_s"], row["model_only_per_s"], row["epoch_to_model_only_ratio"]
    assert abs(ratio - full / alone) <= ratio * (0.05 / full + 0.05 / alone) + 0.0005
    assert not list(tmp_path.glob("**/*.ckpt"))
    assert not list(tmp_path.glob("**/*.png"))  # no logger, so the image callbacks write nothing
    # One step's FLOPs on 16 images: each linear layer's matmul forward (2 * 16 * inputs * outputs), its weight
    # gradient and the gradient of its input, except the first layer's (the images need none). Integers: exact.
    layers = [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]
    assert row["flops_per_step"] == sum(3 * 2 * 16 * n * m for n, m in layers) - 2 * 16 * 784 * 400
    assert row["peak_precision"] == "fp32" and row["peak_flops_per_s"] > 0 and row["achieved_flops_per_s"] > 0
    assert row["share_of_peak"] == row["achieved_flops_per_s"] / row["peak_flops_per_s"]
    assert row["share_of_shape_peak"] == row["achieved_flops_per_s"] / row["shape_peak_flops_per_s"]
    assert "| GFLOP/s | share of peak |" in result.stdout and " of fp32 (" in result.stdout
    assert "at its shapes) |" in result.stdout


def test_resume_continues_from_a_saved_checkpoint(data_root, tmp_path, script_in_process):
    data = ("--data.root", str(data_root), "--data.batch_size", "16")
    first = script_in_process("benchmark", "ae", *data, "--steps", "2", "--save-checkpoint", "first.ckpt")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = script_in_process(
        "benchmark", "ae", *data, "--steps", "5", "--resume", "first.ckpt", "--json", "row.json"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "row.json").read_text())["steps"] == 5
    missing = script_in_process("benchmark", "ae", *data, "--steps", "5", "--resume", "nowhere.ckpt")
    assert missing.returncode != 0 and "checkpoint nowhere.ckpt not found" in missing.stderr.splitlines()[-1]


def test_ppo_row_counts_env_steps_and_reports_when_it_solved(tmp_path, script_in_process):
    out = tmp_path / "row.json"
    result = script_in_process(
        "benchmark", "ppo", "--epochs", "1", "--model.num_steps", "16", "--data.eval_episodes", "2", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["metric"] == "test_mean_return" and row["throughput_unit"] == "env_steps" and row["samples_per_s"] > 0
    # configs/ppo.yaml's SolvedAt callback: one rollout of 4 x 16 steps cannot reach CartPole's 475.
    assert row["solved_at_env_steps"] == -1 and row["solved_after_s"] == -1
    assert "| ppo | gymnasium |" in result.stdout and "env_steps/s" in result.stdout
    # Manual optimisation: no single step loss whose FLOPs could be counted.
    flops = ("flops_per_step", "achieved_flops_per_s", "peak_flops_per_s", "peak_precision", "share_of_peak")
    assert all(row[k] is None for k in (*flops, "shape_peak_flops_per_s", "share_of_shape_peak"))


@pytest.mark.parametrize("flag, value", [("--peak-seconds", "0"), ("--peak-size", "-1"), ("--peak-size", "two")])
def test_a_peak_flag_that_cannot_be_right_is_refused_in_one_line(flag, value, script_in_process):
    line = one_error_line(script_in_process("benchmark", "vae", flag, value))
    assert f"argument {flag}:" in line and value in line


def test_the_model_alone_runs_in_the_runs_precision() -> None:
    """--model-only-steps times training_step under the run's autocast, as the training loop runs it: in a
    bf16-mixed run its linear layer computes in bfloat16 (bf16 autocast works on any CPU, emulated where the CPU
    lacks it), so the model-alone rate compares like with like."""
    import lightning as L
    import torch
    from benchmark import model_only_throughput

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.dtypes = torch.nn.Linear(4, 1), []

        def training_step(self, batch, batch_idx):
            out = self.layer(batch[0])
            self.dtypes.append(out.dtype)
            return out.float().pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Data(L.LightningDataModule):
        def batch(self, split, device="cpu"):
            return (torch.ones(8, 4, device=device),)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(8, 4)), batch_size=8)

    model, data = Recorder(), Data()
    trainer = L.Trainer(precision="bf16-mixed", accelerator="cpu", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    assert model.dtypes == [torch.bfloat16]  # the training loop's step
    assert model_only_throughput(model, trainer, data, steps=2, warmup=1) > 0
    assert model.dtypes == [torch.bfloat16] * 4
