"""The precision chosen at start-up, and the pieces kept in fp32 under bf16 autocast."""

import pytest
import torch

import fit
from lightning_modules.blocks.transformer import SelfAttention
from zoo.precision import cpu_bf16_flags, fastest_precision

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbogomips\t: 4000\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    # The function itself, not conftest's stand-in for it.
    assert cpu_bf16_flags.__module__ == "zoo.precision"
    assert cpu_bf16_flags(CPUINFO.format(extra="avx512f avx512_bf16 amx_bf16")) == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags(CPUINFO.format(extra="avx512f")) == []


@pytest.mark.parametrize(("flags", "want"), [(["avx512_bf16"], "bf16-mixed"), ([], "32-true")])
def test_the_cpu_trains_in_bf16_only_with_native_bf16(monkeypatch, flags, want):
    monkeypatch.setattr("zoo.precision.cpu_bf16_flags", lambda: flags)
    precision, why = fastest_precision("cpu")
    assert precision == want and ("native bf16" in why)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_the_command_line_or_the_config_overrides_the_choice(monkeypatch):
    monkeypatch.setattr("zoo.precision.cpu_bf16_flags", lambda: ["avx512_bf16"])
    chosen = lambda *flags: str(fit.ZooCLI("vae", fit.translate(["--model", "vae", "--data", "digits", *flags])[1])  # noqa: E731
                                .trainer.precision)  # fmt: skip
    assert chosen() == "bf16-mixed"
    assert chosen("--trainer.precision", "32-true") == "32-true"
    ppo = fit.ZooCLI("ppo", fit.translate(["--model", "ppo"])[1])  # configs/ppo.yaml pins fp32
    assert str(ppo.trainer.precision) == "32-true"


def test_attention_runs_in_fp32_under_cpu_bf16_autocast():
    torch.manual_seed(0)
    attention = SelfAttention(32, heads=4)
    x = torch.randn(2, 10, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention(x)
        q, k, v = attention.split_heads(x)  # bf16: the projection is autocast's
        assert q.dtype == torch.bfloat16
    # The same fp32 attention of the bf16 projections, then autocast's bf16 output projection: the same
    # operations on the same values, so equal to the last bit (bf16 attention would differ by ~1e-2).
    y = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = attention.proj(y.transpose(1, 2).flatten(2))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
