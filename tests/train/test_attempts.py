"""Attempts of a run under real faults, through the real launcher (torchrun, 2 CPU processes):

  - exact resume WITH data-loader workers (2 per rank) and dropout on: the launcher alone is
    SIGKILLed (its ranks must then exit by themselves, not train on), the relaunch resumes from S3
    and gives the uninterrupted run's losses;
  - no silent success: S3 unreachable from the start, a misspelt bucket, and S3 lost before the final
    checkpoint all end with exit status 3 and a message saying what is where;
  - a fresh run into a folder that holds a run is refused (exit status 2).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.s3sync import S3Checkpoints
from tests.train.test_launcher import finish, kill_tree, losses, torchrun

STEPS = 8
COMMON = [f"train.steps={STEPS}", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1",
          "train.progress=false", "train.upload_backoff=0.2", "data.batch_size=4", "train.batch_size=8",
          "model.dropout=0.1", "model.attention_dropout=0.1"]   # dropout: the step's own random stream


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("workers", [2])  # 1 worker: the same path, and 33 s of the suite
def test_exact_resume_with_loader_workers_after_the_launcher_is_killed(workers, train_assets, s3_server,
                                                                        tmp_path):
    s3_server.client().create_bucket(Bucket=f"workers{workers}")
    common = [*COMMON, f"data.num_workers={workers}"]
    ref_log = tmp_path / "ref.log"
    finish([torchrun(train_assets["config"], tmp_path / "ref", common, log=ref_log)], [ref_log])
    ref = losses(tmp_path / "ref")
    uri = f"s3://workers{workers}/run"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    log = tmp_path / "killed.log"
    proc = torchrun(train_assets["config"], tmp_path / "killed", [*common, f"train.ckpt_uri={uri}"], log=log)
    assert wait_for(lambda: s3.latest() is not None, 240, proc), log.read_text()[-3000:]
    ranks = psutil.Process(proc.pid).children(recursive=False)
    os.kill(proc.pid, signal.SIGKILL)                      # the launcher only, as `kill <pid>` would
    proc.wait()
    # the ranks notice their launcher is gone and exit (within a second: an upload already on its way
    # may still commit): nothing trains or uploads on behind our back
    alive = lambda: [p.pid for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
    assert wait_for(lambda: not alive(), 20), alive()
    killed_at = s3.latest()
    time.sleep(3)
    assert s3.latest() == killed_at and killed_at < f"step_{STEPS:08d}", "a rank still trained on"
    res_log = tmp_path / "resumed.log"
    finish([torchrun(train_assets["config"], tmp_path / "resumed", [*common, f"train.ckpt_uri={uri}",
                     "train.resume=auto"], log=res_log)], [res_log])
    start = int(killed_at.split("_")[1])
    got = losses(tmp_path / "resumed")
    assert sorted(got) == list(range(start + 1, STEPS + 1))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-6, rel=0), (step, loss, ref[step])


def run_to_end(cmd_proc: subprocess.Popen, log: Path, timeout: float = 240) -> tuple[int, str]:
    try:
        cmd_proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(cmd_proc)
    return cmd_proc.returncode, log.read_text()


def test_s3_unreachable_from_the_start_fails_fast(train_assets, tmp_path, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    log = tmp_path / "down.log"
    t0 = time.time()
    cmd = torchrun(train_assets["config"], tmp_path / "down",
                   [*COMMON, "train.ckpt_uri=s3://b/r", "train.preflight_timeout=3"], nproc=1, log=log)
    code, text = run_to_end(cmd, log)
    assert code != 0 and "error: S3 preflight for s3://b/r failed on rank 0" in text
    assert not (tmp_path / "down" / "metrics.jsonl").exists()      # it never started training
    assert time.time() - t0 < 90


def test_a_misspelt_bucket_is_not_retried_like_an_outage(train_assets, s3_server, tmp_path):
    log = tmp_path / "nobucket.log"
    cmd = torchrun(train_assets["config"], tmp_path / "nb", [*COMMON, "train.ckpt_uri=s3://nosuch/r"],
                   nproc=1, log=log)
    code, text = run_to_end(cmd, log)
    assert code != 0 and "NoSuchBucket" in text and "error: S3 preflight" in text


def test_losing_s3_before_the_final_checkpoint_exits_non_zero_with_a_summary(train_assets, s3_server,
                                                                             tmp_path):
    s3_server.client().create_bucket(Bucket="lost")
    log = tmp_path / "lost.log"
    proc = torchrun(train_assets["config"], tmp_path / "lost",
                    [*COMMON, "train.ckpt_uri=s3://lost/r", "train.steps=60", "train.ckpt_every=20",
                     "train.upload_timeout=8", "train.upload_busy=skip"], nproc=1, log=log)
    try:
        assert wait_for(lambda: "step 3/60" in log.read_text(), 240, proc), log.read_text()[-3000:]
        s3_server.cut()                                    # S3 goes away; only the final checkpoint is due
        code, text = run_to_end(proc, log)
    finally:
        s3_server.restore()
    assert code != 0, text[-3000:]
    # an intermediate checkpoint is skipped while an upload is pending (upload_busy=skip), or, when step
    # 20's upload already gave up at its 8 s deadline (a slow machine), tried and not committed; the
    # final one is never skipped
    assert ("step_00000040 is saved locally but NOT uploaded (train.upload_busy=skip)" in text
            or "step_00000040 NOT committed" in text), text[-3000:]
    assert "step_00000060 NOT committed" in text
    assert "error: the final checkpoint step_00000060 is saved locally in" in text
    assert "NOT committed to s3://lost/r" in text and "latest = " in text
    assert (tmp_path / "lost" / "checkpoints" / "step_00000060" / "COMMITTED").is_file()


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused(train_assets, tmp_path):
    out = tmp_path / "used"
    (out / "checkpoints" / "step_00000004").mkdir(parents=True)
    (out / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
    log = tmp_path / "refused.log"
    code, text = run_to_end(torchrun(train_assets["config"], out, COMMON, nproc=1, log=log), log)
    assert code != 0
    assert f"error: train.output_dir={out} already holds a run (metrics.jsonl, step_00000004)" in text
    assert (out / "metrics.jsonl").read_text() == '{"step": 4, "loss": 1.0}\n'   # untouched
