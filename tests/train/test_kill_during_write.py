"""A run SIGKILLed while its background writer writes a checkpoint: the checkpoint being written is
never committed (locally or on S3), and `--resume auto` continues from the previous committed one
with the uninterrupted run's losses (the default format: elastic/ only, written behind the step).

The writer process is held inside its write by a test-only sitecustomize on PYTHONPATH (it
inherits the environment): after the share of step 6 has been written to its temp file, the
file's flush sleeps, and the test kills the whole job there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.s3sync import S3Checkpoints
from tests.train.test_attempts import COMMON, STEPS, wait_for
from tests.train.test_launcher import REPO, finish, free_port, kill_tree, losses

HOLD = '''
import builtins, os, time
_tag, _signal = os.environ.get("MIXVLP_TEST_HOLD_WRITE"), os.environ.get("MIXVLP_TEST_HOLD_SIGNAL")
if _tag:
    _open = builtins.open

    class _Held:
        def __init__(self, f):
            self._f = f
        def __getattr__(self, name):
            return getattr(self._f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self._f.__exit__(*exc)
        def flush(self):  # the share is in its temp file: hold the writer here until killed
            self._f.flush()
            _open(_signal, "a").close()
            time.sleep(600)

    def _open_held(file, mode="r", *args, **kwargs):
        f = _open(file, mode, *args, **kwargs)
        name = str(file)
        if "w" in mode and _tag in name and "/elastic/params_" in name and name.endswith(".tmp"):
            return _Held(f)
        return f

    builtins.open = _open_held
'''


def launch(config, out_dir: Path, overrides: list[str], log: Path, env_extra: dict) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **env_extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env_extra.get("PYTHONPATH"), str(REPO)]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(REPO / "launchers" / "pretrain.py"),
           "--config", str(config), "--deepspeed_config", str(REPO / "ds_configs" / "zero2.json"),
           f"train.output_dir={out_dir}", *overrides]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_a_kill_during_the_background_write_resumes_from_the_previous_committed_checkpoint(
        train_assets, s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="killwrite")
    uri = "s3://killwrite/run"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    ref_log = tmp_path / "ref.log"
    finish([launch(train_assets["config"], tmp_path / "ref", COMMON, ref_log, {})], [ref_log])
    ref = losses(tmp_path / "ref")

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)
    signal_file = tmp_path / "held"
    log = tmp_path / "killed.log"
    proc = launch(train_assets["config"], tmp_path / "killed", [*COMMON, f"train.ckpt_uri={uri}"], log,
                  {"PYTHONPATH": str(hook), "MIXVLP_TEST_HOLD_WRITE": "step_00000006",
                   "MIXVLP_TEST_HOLD_SIGNAL": str(signal_file)})
    try:
        assert wait_for(signal_file.exists, 240, proc), log.read_text()[-3000:]
        # step 4 was written, committed and handed to the uploader before step 6's write began
        assert wait_for(lambda: s3.latest() == "step_00000004", 60, proc), log.read_text()[-3000:]
    finally:
        kill_tree(proc)  # torchrun, its ranks and their writer processes, mid-write
    held = tmp_path / "killed" / "checkpoints" / "step_00000006"
    assert any(held.glob("elastic/params_*.pt.tmp"))             # the write was under way...
    assert not (held / "elastic" / "meta.json").exists() and not (held / "COMMITTED").exists()
    assert not list(held.glob("elastic/params_*.pt"))             # ...and left no file under a final name
    assert s3.latest() == "step_00000004" and "step_00000006" not in s3.committed_tags()
    local_latest = (tmp_path / "killed" / "checkpoints" / "latest").read_text().strip()
    assert local_latest == "step_00000004"

    res_log = tmp_path / "resumed.log"
    finish([launch(train_assets["config"], tmp_path / "resumed", [*COMMON, f"train.ckpt_uri={uri}",
                                                                   "train.resume=auto"], res_log, {})],
           [res_log])
    assert "continuing from" in res_log.read_text() and "at step 4" in res_log.read_text()
    got = losses(tmp_path / "resumed")
    assert sorted(got) == list(range(5, STEPS + 1))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-6, rel=0), (step, loss, ref[step])
    manifest = s3.committed_manifest(f"step_{STEPS:08d}")
    assert not [e for e in manifest["files"] if "model_states" in e["path"]]  # elastic/ only
    assert json.loads(json.dumps(manifest))["world_size"] == 2
