"""The main job pins one set of CPU kernels (AVX2) on x86-64, so machines of one kind agree."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mixvlp_ds.cpu_kernels import PINS, pin_cpu_kernels


def test_pins_fill_only_what_the_user_left_unset():
    env = {"MKL_CBWR": "COMPATIBLE"}
    added = pin_cpu_kernels(env, machine="x86_64")
    assert env["MKL_CBWR"] == "COMPATIBLE" and "MKL_CBWR" not in added
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    arm = {}
    assert pin_cpu_kernels(arm, machine="aarch64") == {} and arm == {}


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 kernels only")
def test_the_quickstart_process_computes_with_avx2_kernels():
    """In a fresh process that pins before importing torch (as the quickstart's main does), torch
    dispatches to its AVX2 kernels, whatever the machine would pick on its own (AVX512 here)."""
    code = ("import os, sys; from mixvlp_ds.cpu_kernels import pin_cpu_kernels; "
            "pin_cpu_kernels() if sys.argv[1] == 'pin' else None; import torch; "
            "print(torch.backends.cpu.get_cpu_capability())")
    env = {k: v for k, v in os.environ.items() if k not in PINS}

    def capability(mode):
        return subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert capability("pin") == "AVX2"
    assert capability("none") in ("AVX2", "AVX512", "DEFAULT")
