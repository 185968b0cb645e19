"""One line naming the CPU a benchmark ran on, for its table's heading.

bf16 timings depend on the CPU's bf16 instructions more than on its clock: on AVX2 alone, torch's
bf16 input-gradient matmul is ~100x slower than fp32's; with AVX-512 BF16 or AMX it is faster than
fp32 (bench/cpu_matmul_dtypes.py). So the line says which the CPU has.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return platform.processor() or platform.machine(), set()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
    return name, flags


def cpu_line() -> str:
    """E.g. ``AMD EPYC, 2 cores, bf16 instructions: avx512_bf16, torch CPU capability AVX512``."""
    name, flags = _cpuinfo()
    bf16 = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "avx_vnni"))
    line = f"{name}, {os.cpu_count()} cores, bf16 instructions: {', '.join(bf16) or 'none (AVX2 at most)'}"
    try:
        import torch

        line += f", torch {torch.__version__} CPU capability {torch.backends.cpu.get_cpu_capability()}"
    except ImportError:
        pass
    return line
