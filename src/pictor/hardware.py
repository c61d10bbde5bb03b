"""What the processor can do, read once: its name and whether it computes bfloat16 natively.

Both the sampling pipeline (the U-Net's compute dtype, `--dtype auto`) and training (autocast,
`training.mixed_precision: auto`) decide on bfloat16 from here. On x86 CPUs bfloat16 is fast only
with AVX512-BF16 or AMX; without them PyTorch emulates it (seen on an AMD EPYC with AVX2 only:
the shapes model trained at 44 img/s in float32, and in bfloat16 autocast had not finished 10
steps of 64 images after several minutes).
"""

from __future__ import annotations

import platform
from functools import cache, lru_cache

import torch


@cache
def cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo ("flags", "model name"), None where
    there is none (not Linux, or no such line)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((line for line in f if line.split(":", 1)[0].strip() == field), None)
    except OSError:
        return None
    return None if line is None or ":" not in line else line.split(":", 1)[1].strip()


def cpu_has_native_bf16() -> bool:
    """True where the CPU has AVX512-BF16 or AMX-BF16 (not Linux: False, stay with float32)."""
    flags = (cpuinfo("flags") or "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_native_bf16(device: torch.device) -> bool:
    """Does `device` compute bfloat16 natively (a CUDA GPU that supports it, or such a CPU)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else platform.processor() or platform.machine();
    "" where none says. Records (device_name) and benchmarks/common.py's environment name it."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


@lru_cache(maxsize=4)
def device_name(device: torch.device) -> str:
    """The processor a pipeline computes on, as records name it: "cuda: <GPU name>" or
    "cpu: <model name>" (/proc/cpuinfo, else platform.processor()). The same seed and settings
    give the same pixels on one kind of processor; another kind may round its low-precision
    (and vectorised float32) kernels differently, so `pictor reproduce` names both."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"{device.type}: {cpu_name() or 'unknown'}"
