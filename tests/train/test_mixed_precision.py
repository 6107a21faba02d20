"""bf16 through the shipped DeepSpeed configs, run as users run them (DeepSpeed's CPU accelerator
trains in bf16 as a GPU does: the module is cast, inputs follow the weights, losses stay fp32).

  - `deepspeed --num_accelerators 1 launchers/pretrain.py --deepspeed_config ds_configs/zero2.json`
    (the README's command) trains, checkpoints and exports fp32 master weights;
  - a resume from its bf16 checkpoint gives the same losses as the uninterrupted run;
  - fine-tuning and evaluation start from the bf16-trained export;
  - the bf16 loss curve follows the fp32 one (ds_configs/cpu.json) within the stated tolerance;
  - train.compile=true gives the eager losses;
  - ds_configs/zero2_offload.json (bf16, optimizer on the CPU) trains.
Two-process bf16 runs (zero2.json, zero3.json) are in test_launcher.py.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixvlp_ds.train.metrics import read_metrics

REPO = Path(__file__).resolve().parents[2]
STEPS = 8
COMMON = [f"train.steps={STEPS}", "train.ckpt_every=4", "train.log_every=1", "train.progress=false",
          "train.warmup_steps=2", "train.lr=2e-3"]
# bf16 vs fp32 over the 40 steps of the tiny config on this fixture, measured on the 2-core CPU with
# train.seed 0 / 1 / 2: the largest per-step gap in the total loss 0.044% / 0.050% / 0.044% (at step
# 5, loss ~7.5), the summed gap over steps 31-40 0.012% / 0.000% / -0.005%. The tolerances are 20x
# and 40x that, to hold on other CPUs' bf16 kernels.
CURVE_STEP_TOL, CURVE_TAIL_TOL = 0.01, 0.005


@pytest.fixture(scope="module")
def labelled(apps_assets, tmp_path_factory) -> dict:
    """The labelled synthetic institution of tests/conftest.py and a run YAML on it (baseline)."""
    root = tmp_path_factory.mktemp("bf16")
    cfg = yaml.safe_load((REPO / "configs" / "tiny_cpu.yaml").read_text())
    cfg["tokenizer"] = apps_assets["tokenizer"]
    cfg["data"].update(scenario="baseline", paired_percent=100,
                       sources=[{"name": "openi-like", "uri": apps_assets["shards"], "role": "paired"}])
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "shards": apps_assets["shards"], "config": root / "run.yaml"}


def env() -> dict:
    e = {k: v for k, v in os.environ.items()
         if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    e.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    return e


def run(cmd: list[str], log: Path, timeout: int = 300) -> str:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


def pretrain_cmd(config: Path, ds: str, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "launchers" / "pretrain.py"), "--deepspeed_config",
            str(REPO / "ds_configs" / ds), "--config", str(config), f"train.output_dir={out}", *overrides]


def losses(out: Path) -> dict[int, float]:
    return {s: r["loss"] for s, r in read_metrics(out / "metrics.jsonl").items()}


@pytest.fixture(scope="module")
def bf16_run(labelled) -> Path:
    """The README's command: the deepspeed launcher, ds_configs/zero2.json as shipped."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = labelled["root"] / "zero2"
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_accelerators", "1",
           "--master_port", str(port), str(REPO / "launchers" / "pretrain.py"),
           "--deepspeed_config", str(REPO / "ds_configs" / "zero2.json"), "--config", str(labelled["config"]),
           f"train.output_dir={out}", *COMMON]
    text = run(cmd, labelled["root"] / "zero2.log")
    assert "bf16, ZeRO stage 2" in text
    return out


def test_deepspeed_launcher_trains_zero2_in_bf16(bf16_run):
    from safetensors.torch import load_file

    got = losses(bf16_run)
    assert sorted(got) == list(range(1, STEPS + 1)) and all(math.isfinite(v) for v in got.values())
    assert got[STEPS] < got[1]
    assert (bf16_run / "checkpoints" / "step_00000004" / "COMMITTED").is_file()
    weights = load_file(str(bf16_run / "model" / "model.safetensors"))
    w = weights["encoder.blocks.0.ffn_in.weight"]
    # the export holds the optimizer's fp32 master weights, not the bf16 copy the engine computes with
    assert w.dtype.is_floating_point and str(w.dtype) == "torch.float32"
    assert (w.bfloat16().float() != w).any()


def test_resume_from_a_bf16_checkpoint_gives_the_same_losses(bf16_run, labelled):
    ref = losses(bf16_run)
    out = labelled["root"] / "resumed"
    text = run(pretrain_cmd(labelled["config"], "zero2.json", out, *COMMON,
                            f"train.resume={bf16_run / 'checkpoints' / 'step_00000004'}"),
               labelled["root"] / "resumed.log")
    assert "continuing from" in text
    got = losses(out)
    assert sorted(got) == list(range(5, STEPS + 1))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-6, rel=0), (step, loss, ref[step])


def test_finetune_and_evaluate_from_the_bf16_export(bf16_run, labelled, tmp_path):
    from mixvlp_ds.apps import finetune
    from mixvlp_ds.programs import evaluate

    summary = finetune.main(["--task", "cls", "--init", str(bf16_run / "model"),
                             f"shards={labelled['shards']}",
                             "epochs=2", "batch_size=16", "plots=false", f"output_dir={tmp_path / 'ft'}"])
    res = summary["results"]["txt_only"]
    assert res["mean_auc"] is not None and 0.0 <= res["mean_auc"] <= 1.0
    ev = evaluate.main(["--task", "cls", "--model", str(tmp_path / "ft" / "models" / "txt_only"),
                        "--shards", labelled["shards"], "--out", str(tmp_path / "ev")])
    assert ev["results"]["txt_only"]["mean_auc"] == pytest.approx(res["mean_auc"], abs=1e-6)


def test_bf16_loss_curve_follows_fp32(labelled):
    """40 steps of the tiny config (its own schedule) in fp32 (cpu.json) and bf16 (zero2.json)."""
    curves = {}
    for ds in ("cpu.json", "zero2.json"):
        out = labelled["root"] / f"curve-{ds}"
        run(pretrain_cmd(labelled["config"], ds, out, "train.log_every=1", "train.progress=false",
                         "train.ckpt_every=1000"), labelled["root"] / f"curve-{ds}.log")
        curves[ds] = losses(out)
    fp32, bf16 = curves["cpu.json"], curves["zero2.json"]
    assert sorted(fp32) == sorted(bf16) == list(range(1, 41))
    gaps = [abs(bf16[s] - fp32[s]) / fp32[s] for s in fp32]
    assert max(gaps) < CURVE_STEP_TOL, max(gaps)
    tail = sum(bf16[s] - fp32[s] for s in range(31, 41)) / sum(fp32[s] for s in range(31, 41))
    assert abs(tail) < CURVE_TAIL_TOL, tail
    assert fp32[40] < fp32[1] and bf16[40] < bf16[1]


def test_compiled_training_gives_the_eager_losses(labelled):
    """train.compile=true: torch.compile through DeepSpeed's engine (inductor on this CPU)."""
    got = {}
    for compiled in ("false", "true"):
        out = labelled["root"] / f"compile-{compiled}"
        text = run(pretrain_cmd(labelled["config"], "cpu.json", out, "train.steps=4", "train.log_every=1",
                                "train.progress=false", "train.ckpt_every=1000", f"train.compile={compiled}"),
                   labelled["root"] / f"compile-{compiled}.log", timeout=400)
        assert ("compiled, global batch" in text) == (compiled == "true")
        got[compiled] = losses(out)
    for step in range(1, 5):
        assert got["true"][step] == pytest.approx(got["false"][step], rel=1e-4), step


def test_zero2_offload_trains_in_bf16(labelled):
    out = labelled["root"] / "offload"
    text = run(pretrain_cmd(labelled["config"], "zero2_offload.json", out, "train.steps=4",
                            "train.log_every=1", "train.progress=false", "train.ckpt_every=1000"),
               labelled["root"] / "offload.log")
    assert "bf16, ZeRO stage 2" in text
    got = losses(out)
    assert sorted(got) == [1, 2, 3, 4] and all(math.isfinite(v) for v in got.values())


def test_fp16_on_cpu_stops_with_a_clear_error(labelled):
    proc = subprocess.run(pretrain_cmd(labelled["config"], "fp16.json", labelled["root"] / "fp16"), env=env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "fp16 is enabled, but this cpu device has no fp16 training" in proc.stderr
    assert "Traceback" not in proc.stderr
