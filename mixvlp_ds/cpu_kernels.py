"""One set of CPU kernels on every x86-64 machine, so a CPU job computes the same numbers on all.

torch (ATen), MKL and oneDNN each pick a code path from the CPU they find: AVX-512 on this
project's development machine, AVX2 on many machines sold as the same kind. The paths round
differently; one training step differs in the 7th digit, and 1500 steps amplify that into other
results (measured: docs/synthetic_results.md, "Two machines of one kind"). AVX2 is on every x86-64
server CPU of the last decade, so pinning it makes those machines agree, at no measured cost for
the tiny models (290 samples/s either way). Call before torch is first imported; a variable the
user set wins. Other architectures (ARM) are left alone.
"""

from __future__ import annotations

import os
import platform

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_cpu_kernels(environ: dict | None = None, machine: str | None = None) -> dict[str, str]:
    """Set PINS in `environ` (default os.environ) where unset, on x86-64 only. Returns what was set."""
    env = os.environ if environ is None else environ
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return {}
    added = {k: v for k, v in PINS.items() if k not in env}
    env.update(added)
    return added
