"""What this machine computes fast, for the "auto" training precision and scoring dtype.

bf16 matmuls are ~3.5x faster than fp32 on CPUs with AMX or AVX512-BF16, but ~60x slower on
AVX2-only ones (1024x1024 on an AMD EPYC: 2.84 s vs 0.045 s), so "auto" must look before it
picks. Read from /proc/cpuinfo, not torch, so a dry run can price it without importing torch.
"""

from __future__ import annotations

import functools
from pathlib import Path

FAST_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
PRECISIONS = ("fp32", "fp16", "bf16")  # ranks that disagree settle on the first both have


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has AMX-BF16 or AVX512-BF16 (Linux; False where it cannot tell)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return any(flag in flags for flag in FAST_BF16_FLAGS)


def auto_precision(gpu: bool, gpu_has_bf16: bool = True) -> str:
    """The training precision "auto" stands for: bf16 on GPUs that have it (fp16 on older ones)
    and on CPUs with fast bf16, else fp32."""
    if gpu:
        return "bf16" if gpu_has_bf16 else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"
