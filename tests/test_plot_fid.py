"""scripts/plot_fid.py: each evaluate.py --json file's FIDs placed at their samplers' network evaluations."""

import json

from PIL import Image

from conftest import one_error_line


def test_the_fids_are_drawn_at_their_samplers_evaluations(tmp_path, script_in_process) -> None:
    (tmp_path / "edm.json").write_text(json.dumps({
        "model": "EDM", "checkpoint": "edm.ckpt", "test/loss": 0.1, "inversion_mse": 1e-4,
        "fid_heun18": 3.0, "fid_heun5": 9.0, "fid_heun18w2": 5.0, "label_acc_heun18w2": 0.98,
    }))  # fmt: skip
    (tmp_path / "ddpm.json").write_text(json.dumps({"model": "DDPM", "fid_ddim50": 4.0, "fid_ddpm": 2.0}))
    result = script_in_process("plot_fid", "edm.json", "ddpm.json", "--out", "curve.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:3] == [
        "EDM heun: 9 -> 9.00, 35 -> 3.00",  # 2N - 1 evaluations, in order of evaluations
        "EDM heun w2: 35 -> 5.00",
        "DDPM ddim: 50 -> 4.00",
    ]
    assert "DDPM ddpm: 1000 -> 2.00" in result.stdout
    assert Image.open(tmp_path / "curve.png").format == "PNG"


def test_a_file_without_fids_is_refused_in_one_line(tmp_path, script_in_process) -> None:
    (tmp_path / "ae.json").write_text(json.dumps({"model": "Autoencoder", "test/mse": 0.01}))
    line = one_error_line(script_in_process("plot_fid", "ae.json"))
    assert (
        line
        == "plot_fid.py: error: ae.json holds no FID of a heunN, ddimN or ddpm sampler; run evaluate.py with --samplers"
    )
    (tmp_path / "broken.json").write_text("{")
    assert "broken.json is not an evaluate.py --json file" in one_error_line(
        script_in_process("plot_fid", "broken.json")
    )
