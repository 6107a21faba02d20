"""A resume never trains on other optimizer hyper-parameters than its run config says.

The checkpoint's optimizer and LR-schedule state carry lr (LambdaLR's base LRs), betas, eps and
weight_decay (the param groups): loading it would silently keep the old values while the run config
and the run_config.yaml of the new checkpoints say the new ones. Such a resume is refused with exit
status 2 and one `error:` line naming old and new values; the schedule's shape (warm-up, steps) is
not in that state and follows the run config, which then says what was trained.

Real short runs of the program (`python launchers/pretrain.py`, one process: DeepSpeed's groups do
not survive a second run in one process) on CPU (cpu.json, fp32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def cli(argv: list[str]) -> tuple[int, str]:
    """`python launchers/pretrain.py ARGV`: (exit status, stderr + stdout)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    p = subprocess.run([sys.executable, str(REPO / "launchers" / "pretrain.py"), *argv], env=env,
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    return p.returncode, p.stderr + p.stdout

BASE = ["train.steps=4", "train.ckpt_every=2", "train.log_every=1", "train.progress=false",
        "train.tensorboard=false", "data.batch_size=4", "train.batch_size=4", "train.lr=1e-3",
        "train.warmup_steps=2", "--deepspeed_config", "ds_configs/cpu.json"]


@pytest.fixture(scope="module")
def first_run(train_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("hparams") / "first"
    code, text = cli(["--config", str(train_assets["config"]), *BASE, f"train.output_dir={out}"])
    assert code == 0, text[-3000:]
    return out / "checkpoints"


@pytest.mark.parametrize("override,old,new", [
    ("train.lr=5e-4", "0.001", "0.0005"),
    ("train.betas=[0.8,0.95]", "[0.9,0.999]", "[0.8,0.95]"),
    ("train.weight_decay=0.1", "0.01", "0.1"),
    ("train.eps=1e-6", "1e-08", "1e-06"),
])
def test_a_changed_optimizer_hyperparameter_on_resume_is_refused(first_run, train_assets, tmp_path,
                                                                   override, old, new):
    key = override.split("=")[0]
    out = tmp_path / "resumed"
    code, err = cli(["--config", str(train_assets["config"]), *BASE, "train.steps=6",
                     f"train.resume={first_run}", override, f"train.output_dir={out}"])
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1, err[-3000:]
    assert f"{key} is {new}, the checkpoint was trained with {old}" in lines[0]
    assert f"Keep {key}={old}" in lines[0]
    assert "Traceback" not in err
    assert not (out / "checkpoints" / "step_00000006").exists()      # nothing trained on the old values


def test_a_longer_schedule_is_applied_and_recorded(first_run, train_assets, tmp_path):
    """train.steps and train.warmup_steps shape the schedule from the run config (not carried by the
    checkpoint): a resume with other values trains on them, and its checkpoints say so."""
    out = tmp_path / "longer"
    code, text = cli(["--config", str(train_assets["config"]), *BASE, "train.steps=6", "train.warmup_steps=3",
                      f"train.resume={first_run}", f"train.output_dir={out}"])
    assert code == 0, text[-3000:]
    saved = yaml.safe_load((out / "checkpoints" / "step_00000006" / "run_config.yaml").read_text())["train"]
    assert saved["lr"] == 1e-3 and saved["steps"] == 6 and saved["warmup_steps"] == 3
    from mixvlp_ds.train.schedule import lr_factor

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert sorted(lrs) == [5, 6]
    for step, lr in lrs.items():   # the new curve (6 steps, warm-up 3), at the old base lr
        assert any(lr == pytest.approx(1e-3 * lr_factor(step + o, 3, 6, "cosine", 0.0)) for o in (-1, 0)), lrs
