"""Configuration errors of the pre-training program end with exit status 2 and ONE line
`error: <file>: <key>: <problem>` naming the key (docs/training.md), never a traceback:

  - DeepSpeed config: nested typos (validated against DeepSpeed's own pydantic models, recursively,
    with the nearest valid key), a typo beside a valid key, a typo alone (not reported as "stage=0"),
    optimizer params against the optimizer's signature, an optimizer type the project does not train
    with, a value DeepSpeed's model rejects;
  - run config: a fraction out of range, missing shards, a missing tokenizer, shards of another image
    size than the model's.

The DeepSpeed cases run `python launchers/pretrain.py` (they fail after the process group is up),
all at once; the run-config cases call the program's `cli` in this process (they fail before).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixvlp_ds.train.pretrain import cli

REPO = Path(__file__).resolve().parents[2]
ZERO2 = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
COMMON = ["train.steps=2", "train.progress=false", "data.batch_size=4", "train.batch_size=4"]


def ds_case(change) -> dict:
    ds = copy.deepcopy(ZERO2)
    change(ds)
    return ds


DS_CASES = {  # name: (DeepSpeed config, the dotted key the error names, a word of the hint)
    "nested_typo": (ds_case(lambda d: d["zero_optimization"].update(offload_optimiser={"device": "cpu"})),
                    "zero_optimization.offload_optimiser", "'offload_optimizer'"),
    "typo_beside_stage": (ds_case(lambda d: d.update(zero_optimization={"stage": 2, "stgae": 3})),
                          "zero_optimization.stgae", "'stage'"),
    "typo_alone": (ds_case(lambda d: d.update(zero_optimization={"stgae": 2})),
                   "zero_optimization.stgae", "'stage'"),
    "deeper_typo": (ds_case(lambda d: d["zero_optimization"].update(
        offload_optimizer={"device": "cpu", "pin_memroy": True})),
        "zero_optimization.offload_optimizer.pin_memroy", "'pin_memory'"),
    "bf16_typo": (ds_case(lambda d: d["bf16"].update(enabeld=True)), "bf16.enabeld", "'enabled'"),
    "optimizer_param": (ds_case(lambda d: d["optimizer"]["params"].update(betas_=[0.9, 0.99])),
                        "optimizer.params.betas_", "'betas'"),
    "optimizer_type": (ds_case(lambda d: d["optimizer"].update(type="AdamWW")), "optimizer.type", "'AdamW'"),
    "bad_value": (ds_case(lambda d: d["zero_optimization"].update(reduce_bucket_size="big")),
                  "zero_optimization.reduce_bucket_size", "integer"),
}


@pytest.fixture(scope="module")
def ds_runs(train_assets, tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Every DeepSpeed case through the launcher script, started together: {name: (status, output)}."""
    tmp = tmp_path_factory.mktemp("ds_errors")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    procs = {}
    for name, (ds, _, _) in DS_CASES.items():
        (tmp / f"{name}.json").write_text(json.dumps(ds))
        cmd = [sys.executable, str(REPO / "launchers" / "pretrain.py"), "--config",
               str(train_assets["config"]), "--deepspeed_config", str(tmp / f"{name}.json"), *COMMON,
               f"train.output_dir={tmp / name}"]
        with open(tmp / f"{name}.log", "w") as log:
            procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return {name: (p.wait(300), (tmp / f"{name}.log").read_text()) for name, p in procs.items()}


def one_error_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    return lines[0]


@pytest.mark.parametrize("name", list(DS_CASES))
def test_deepspeed_config_errors_name_the_key(ds_runs, name):
    code, text = ds_runs[name]
    _, key, hint = DS_CASES[name]
    line = one_error_line(text)
    assert code == 2, text[-3000:]
    assert line.startswith("error: ") and f"{name}.json: {key}:" in line, line
    assert hint in line, line
    assert "stage=0" not in line


RUN_CASES = {  # name: (overrides, what the line says)
    "fraction": (["data.max_skip_fraction=1.5"], "data.max_skip_fraction: 1.5 is not a fraction in [0, 1]"),
    "missing_shards": (["data.sources.0.uri=/nonexistent/shards"],
                       "data.sources.0.uri: source 'a': /nonexistent/shards/index.json: not found"),
    "missing_tokenizer": (["tokenizer=/nonexistent/tok"],
                          "tokenizer: tokenizer directory /nonexistent/tok does not exist"),
    "image_size": (["model.image_size=64"],
                   "data.sources.0.uri: the shards of source 'a' have image_size 32, model.image_size is 64"),
}


@pytest.mark.parametrize("name", list(RUN_CASES))
def test_run_config_and_input_errors_name_the_key(train_assets, tmp_path, capsys, name):
    overrides, said = RUN_CASES[name]
    code = cli(["--config", str(train_assets["config"]), *COMMON, f"train.output_dir={tmp_path}", *overrides])
    out = capsys.readouterr()
    line = one_error_line(out.err + out.out)
    assert code == 2
    assert line.startswith(f"error: {train_assets['config']}: {said}"), line
