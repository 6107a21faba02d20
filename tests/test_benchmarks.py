"""The GPU benchmark script, run here as it runs on an H100/H200 but at toy sizes on the CPU
(GPU_SUITE_SMOKE=1): every run of the suite, through benchmarks/train_bench.py, the launcher's
build/engine/loop/loader beside the plain loop, and the merged JSON. Timings are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_suite_smoke_runs_every_step_and_merges_the_json(tmp_path):
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(GPU_SUITE_SMOKE="1", WORK=str(tmp_path / "work"), OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert summary["graph_breaks"] == 0
    assert set(summary["ratio_vs_plain"]) == {"eager"} and summary["ratio_vs_plain"]["eager"] > 0
    runs = {(r["run"], r["path"]) for r in summary["rows"]}
    assert runs == {("zero2_mb64", "project"), ("zero2_mb64", "plain"), ("zero2_mb128_compiled", "project"),
                    ("zero3_mb64", "project"), ("zero2_mb128_actckpt", "project")}
    assert all(r["samples_per_s"] > 0 and r["precision"] == "bf16" for r in summary["rows"])
    by_run = {r["run"]: r for r in summary["rows"] if r["path"] == "project"}
    assert by_run["zero3_mb64"]["stage"] == 3 and by_run["zero2_mb128_actckpt"]["activation_checkpointing"]
    assert "| zero2_mb64 | plain |" in proc.stdout
    ckpt = {r["way"]: r for r in summary["checkpoint"]}  # checkpoint_bench.py's row, on the tiny model
    assert set(ckpt) == {"deepspeed", "elastic", "elastic+async"}
    assert all(r["bytes"] > 0 and r["load_s"] >= 0 for r in ckpt.values())
