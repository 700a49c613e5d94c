"""The fastest precision that keeps quality, chosen at start-up when the command line names none.

bf16-mixed where the hardware does bf16 natively: a CUDA GPU that supports it, or a CPU with the avx512_bf16 or
amx_bf16 instructions (there bf16 matrix products run at several times the fp32 rate; on other CPUs torch
emulates bf16, which is slower than fp32). Everything else trains in fp32 (32-true). `--trainer.precision`
forces either; a config may pin one.
"""

import sys
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 instruction sets this CPU advertises (Linux's /proc/cpuinfo; none elsewhere)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if not sys.platform.startswith("linux") or not path.is_file():
            return []
        cpuinfo = path.read_text(errors="replace")
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]


def fastest_precision(accelerator: str) -> tuple[str, str]:
    """(Lightning precision, why) for the accelerator the run will use ("cpu", "gpu"/"cuda" or "auto")."""
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", "this GPU has bf16"
        return "32-true", "this GPU has no bf16"
    flags = cpu_bf16_flags()
    if flags:
        return "bf16-mixed", f"this CPU has native bf16 ({', '.join(flags)})"
    return "32-true", "this CPU has no native bf16"
