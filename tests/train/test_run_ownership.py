"""A run owns its S3 prefix and its output folder (the real program, one process, `python
launchers/pretrain.py`): each case below is refused at start with exit status 2 and one `error:` line
saying what is there and how to go on, and nothing there is touched.

  - a fresh run into a prefix holding another run's committed checkpoints (its retention would have
    deleted them as "old", and a later --resume auto would have continued the other run);
  - --resume auto with nothing committed at the prefix into a folder that holds a run (it would
    have overwritten that run's checkpoints and appended to its metrics);
  - a fresh run into a folder that holds only an exported model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.checkpoint_store import tag_for
from mixvlp_ds.train.checkpoint_upload import AttemptRank, CheckpointUploader
from mixvlp_ds.train.s3sync import S3Checkpoints
from tests.train.test_checkpoint_store import fake_checkpoint

REPO = Path(__file__).resolve().parents[2]
COMMON = ["train.steps=4", "train.ckpt_every=2", "train.progress=false", "data.batch_size=4",
          "train.batch_size=4", "train.preflight_timeout=10"]


def pretrain(config, out_dir, overrides, timeout: float = 300) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    cmd = [sys.executable, str(REPO / "launchers" / "pretrain.py"), "--config", str(config),
           f"train.output_dir={out_dir}", *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def test_a_fresh_run_into_a_prefix_holding_another_run_is_refused(train_assets, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/shared"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    s3.write_lease({"attempt": "other-run"})
    other = CheckpointUploader(tmp_path / "other", uri, AttemptRank(0, 1, "other-run"), log=lambda m: None)
    for step in (100, 120):
        other.submit(fake_checkpoint(tmp_path / "other", step))
        assert other.wait(60)
    before = sorted(s3.list_keys(""))
    code, text = pretrain(train_assets["config"], tmp_path / "new", [*COMMON, f"train.ckpt_uri={uri}"])
    assert code == 2, text[-3000:]
    assert error_lines(text) == [
        f"error: train.ckpt_uri={uri} already holds a run (committed checkpoints {tag_for(100)}, "
        f"{tag_for(120)}); a fresh run there would mix with it and its retention would delete them. "
        f"Resume that run (--resume auto) or choose another --ckpt-uri prefix"]
    assert sorted(s3.list_keys("")) == before and s3.lease()["attempt"] == "other-run"   # untouched
    assert not (tmp_path / "new" / "metrics.jsonl").exists()


def test_resume_auto_with_nothing_committed_does_not_overwrite_the_folders_run(train_assets, s3_bucket,
                                                                                tmp_path):
    out = tmp_path / "used"
    tag = fake_checkpoint(out / "checkpoints", 4)
    (out / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
    uri = f"s3://{s3_bucket}/empty"
    code, text = pretrain(train_assets["config"], out,
                          [*COMMON, f"train.ckpt_uri={uri}", "train.resume=auto"])
    assert code == 2, text[-3000:]
    assert error_lines(text) == [
        f"error: --resume auto: nothing is committed at {uri}, but train.output_dir={out} already holds a "
        f"run (metrics.jsonl, {tag}); starting from scratch there would overwrite its checkpoints and "
        f"append to its metrics. Resume it from its local checkpoints (--resume {out / 'checkpoints'}), "
        f"or choose a new train.output_dir"]
    assert (out / "metrics.jsonl").read_text() == '{"step": 4, "loss": 1.0}\n'
    assert (out / "checkpoints" / tag / "rank_00000.pt").read_bytes().endswith(b"step 4\n")
    assert not S3Checkpoints(parse_s3_uri(uri)).tags()


def test_a_fresh_run_into_a_folder_holding_an_exported_model_is_refused(train_assets, tmp_path):
    out = tmp_path / "exported"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    code, text = pretrain(train_assets["config"], out, COMMON)
    assert code == 2, text[-3000:]
    assert len(error_lines(text)) == 1
    assert error_lines(text)[0].startswith(f"error: train.output_dir={out} already holds a run (model/)")
    assert (out / "model" / "config.json").read_text() == "{}" and not (out / "metrics.jsonl").exists()
