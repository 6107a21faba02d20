"""Resume on another world through the real launcher (torchrun, CPU processes, the local S3 server):

  - 2 ranks x 2 loader workers, bf16 ZeRO-2 as shipped, the launcher SIGKILLed after a checkpoint
    was committed to S3; the relaunch on ONE process with no loader workers resumes from S3 by
    itself: every tuple of the interrupted epoch is trained exactly once over the two runs together
    (the record logs, against the epoch computed by the loader library), and the schedule goes on;
  - 1 rank in fp32 ZeRO-2 -> 2 ranks in fp32 ZeRO-3 (cpu.json, zero3.json), from a local folder,
    after a refused resume with a changed global batch (what changed, and the override).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest

from mixvlp_ds.data import build_pretrain_loader
from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.text.tokenizer import load_tokenizer
from mixvlp_ds.train.config import load_run_config
from mixvlp_ds.train.s3sync import S3Checkpoints
from mixvlp_ds.train.schedule import lr_factor
from tests.train.test_attempts import run_to_end, wait_for
from tests.train.test_launcher import finish, losses, torchrun

COMMON = ["train.ckpt_every=2", "train.keep_last=2", "train.log_every=1", "train.progress=false",
          "train.upload_backoff=0.2", "data.batch_size=4", "train.batch_size=8", "train.record_log=true"]


def records(out_dir: Path, before_step: int | None = None, epoch: int = 0) -> Counter:
    """(image key, report key, pair) of the rows trained in `epoch` (before the checkpoint at
    `before_step`: the micro-batches drawn after it were lost with the killed run)."""
    out = Counter()
    for f in sorted((out_dir / "records").glob("rank_*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r["epoch"] == epoch and (before_step is None or r["step"] < before_step):
                out.update(zip(r["key"], r["text_key"], r["pair"], strict=True))
    return out


def uninterrupted_epoch(config: Path, overrides: list[str], world: int, epoch: int = 0) -> Counter:
    """What an uninterrupted run at `world` ranks trains in `epoch`, from the loader library."""
    run = load_run_config(config, overrides)
    tok = load_tokenizer(run.tokenizer)
    out = Counter()
    for rank in range(world):
        loader = build_pretrain_loader(run.data, tok, rank, world, seed=run.train.seed, model=run.model)
        for _ in range(epoch):
            for _ in loader:
                pass
        for b in loader:
            rows = zip(b["key"], b["text_key"], b["pair"].tolist(), strict=True)
            out.update((k, tk, p) for k, tk, p in rows if k or tk)
    return out


def test_two_ranks_killed_resume_on_one_process_from_s3(train_assets, s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="elastic")
    uri = "s3://elastic/run"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    old = [*COMMON, "train.steps=24", "data.num_workers=2", f"train.ckpt_uri={uri}"]
    log = tmp_path / "killed.log"
    proc = torchrun(train_assets["config"], tmp_path / "killed", old, log=log)
    assert wait_for(lambda: s3.latest() is not None, 240, proc), log.read_text()[-3000:]
    ranks = psutil.Process(proc.pid).children(recursive=False)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    alive = lambda: [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # noqa: E731
    assert wait_for(lambda: not alive(), 20)
    start = int(s3.latest().split("_")[1])

    new = [*COMMON, "train.steps=24", "data.num_workers=0", f"train.ckpt_uri={uri}", "train.resume=auto"]
    res_log = tmp_path / "resumed.log"
    finish([torchrun(train_assets["config"], tmp_path / "resumed", new, nproc=1, log=res_log)], [res_log])
    text = res_log.read_text()
    assert "[resume] continuing from" in text
    assert "elastic: world_size 2 (now 1), num_workers 2 (now 1)" in text
    got = losses(tmp_path / "resumed")
    assert sorted(got) == list(range(start + 1, 25))
    # exactly once: the killed run's rows up to its checkpoint and the resumed run's rows of epoch 0
    # are the uninterrupted 2-rank run's epoch 0, tuple for tuple
    before, after = records(tmp_path / "killed", before_step=start), records(tmp_path / "resumed")
    whole = uninterrupted_epoch(train_assets["config"], old, 2)
    assert sum(before.values()) > 0 and sum(after.values()) > 0
    assert before + after == whole
    # the resumed run went on into epoch 1, dealt to its own world
    assert records(tmp_path / "resumed", epoch=1)
    # the LR schedule goes on where it was (a fresh schedule would restart the warm-up): the logged LRs
    # of both runs follow one curve
    lr = logged_lr(tmp_path / "killed") | logged_lr(tmp_path / "resumed")
    offset = next(o for o in (-1, 0, 1) if all(v == pytest.approx(schedule(s + o)) for s, v in lr.items()
                                                if s <= start))
    assert all(v == pytest.approx(schedule(s + offset)) for s, v in logged_lr(tmp_path / "resumed").items())


def logged_lr(out_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def schedule(step: int) -> float:
    """configs/tiny_cpu.yaml's schedule over train.steps=24."""
    return 1e-3 * lr_factor(step, 5, 24, "cosine", 0.0)


def test_one_rank_fp32_zero2_resumes_on_two_ranks_zero3(train_assets, tmp_path):
    """1 rank (cpu.json, fp32 ZeRO-2) -> 2 ranks (zero3.json), from a local folder; first a resume
    that cannot keep the guarantee (another global batch: the LR schedule counts its steps) is
    refused with one `error:` line. 16 rows per rank: rank 0 finishes the interrupted epoch within the
    run, rank 1 has nothing of it and starts the next one."""
    first = [*COMMON, "data.batch_size=16", "train.batch_size=32", "train.steps=3", "data.num_workers=1"]
    log1 = tmp_path / "one.log"
    one = torchrun(train_assets["config"], tmp_path / "one", first, ds="cpu.json", nproc=1, log=log1)
    finish([one], [log1])
    ckpts = tmp_path / "one" / "checkpoints"
    second = [*first, "train.steps=8", "data.num_workers=0", f"train.resume={ckpts}"]
    log = tmp_path / "refused.log"
    refused = torchrun(train_assets["config"], tmp_path / "refused", [*second, "train.batch_size=64"],
                       ds="zero3.json", nproc=2, log=log)
    code, text = run_to_end(refused, log)
    said = (r"error: train.batch_size is 64, the checkpoint in .* was trained with 32: the LR schedule "
            r"counts steps of that batch.*train.allow_batch_change=true")
    assert code != 0 and re.search(said, text), text[-3000:]
    log2 = tmp_path / "two.log"
    finish([torchrun(train_assets["config"], tmp_path / "two", second, ds="zero3.json", nproc=2, log=log2)],
           [log2])
    text = log2.read_text()
    assert "elastic: world_size 1 (now 2)" in text and "zero_stage 2 (now 3)" in text
    got = losses(tmp_path / "two")
    assert sorted(got) == list(range(4, 9)) and all(v == v for v in got.values())
    before, after = records(tmp_path / "one"), records(tmp_path / "two")
    assert sum(after.values()) > 0
    assert before + after == uninterrupted_epoch(train_assets["config"], first, 1)
