"""The S3 checkpoint commit protocol against a real (moto) S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.checkpoint_store import commit_local, fetch_for_resume, owner_rank, prune_local, tag_for
from mixvlp_ds.train.checkpoint_upload import AttemptRank, CheckpointUploader, UploadPolicy
from mixvlp_ds.train.s3sync import S3Checkpoints

FILES = {  # a 2-rank ZeRO-2 checkpoint's file names, with the rank that owns each
    "mp_rank_00_model_states.pt": 0,
    "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 0,
    "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 1,
    "rank_00000.pt": 0,
    "rank_00001.pt": 1,
    "tokenizer/vocab.txt": 0,
}


def fake_checkpoint(root: Path, step: int, big: int = 0) -> str:
    tag = tag_for(step)
    for name in FILES:
        p = root / tag / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{name} at step {step}\n".encode() * 50)
    if big:
        (root / tag / "zero_pp_rank_1_mp_rank_00_model_states.pt").write_bytes(b"x" * big)
    commit_local(root, tag)
    return tag


def upload_all(uploaders, tag):
    for u in uploaders:
        u.submit(tag)
    for u in uploaders:
        assert u.wait(60)


def test_owner_rank_reads_deepspeed_file_names():
    for name, rank in FILES.items():
        assert owner_rank(name) == rank, name
    assert owner_rank("zero_pp_rank_12_mp_rank_00_model_states.pt") == 12


def test_commit_protocol_multipart_and_retention(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/runs/a"
    policy = UploadPolicy(keep_last=2, multipart_threshold=8 << 20)
    ups = [CheckpointUploader(tmp_path, uri, AttemptRank(r, 2), policy, log=lambda m: None) for r in (0, 1)]
    s3 = S3Checkpoints(parse_s3_uri(uri))
    tag = fake_checkpoint(tmp_path, 10, big=9 << 20)
    # rank 0 alone cannot commit: it waits for rank 1's manifest (the cross-node barrier)
    ups[0].submit(tag)
    time.sleep(1.5)
    assert ups[0].busy() and s3.latest() is None and s3.committed_tags() == []
    ups[1].submit(tag)
    assert ups[0].wait(60) and ups[1].wait(60)
    assert s3.latest() == tag and ups[0].errors == []
    manifest = s3.committed_manifest(tag)
    assert sorted(e["path"] for e in manifest["files"]) == sorted(
        list(FILES) + ["zero_pp_rank_1_mp_rank_00_model_states.pt"])
    big = s3.client.head_object(Bucket=s3_bucket,
                                Key=f"runs/a/{tag}/attempt-none/zero_pp_rank_1_mp_rank_00_model_states.pt")
    assert "-" in big["ETag"]  # multipart upload
    for step in (20, 30):
        upload_all(ups, fake_checkpoint(tmp_path, step))
    assert s3.latest() == tag_for(30)
    assert s3.tags() == [tag_for(20), tag_for(30)]  # keep_last=2, the oldest deleted after the commit
    assert prune_local(tmp_path, keep_last=2) == [tag_for(10)]
    assert sorted(p.name for p in tmp_path.glob("step_*")) == [tag_for(20), tag_for(30)]


def test_missing_rank_never_commits(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/r"
    logs = []
    ups = [CheckpointUploader(tmp_path, uri, AttemptRank(r, 2), UploadPolicy(upload_timeout=3),
                              log=logs.append) for r in (0, 1)]
    upload_all(ups, fake_checkpoint(tmp_path, 1))
    ups[0].submit(fake_checkpoint(tmp_path, 2))  # rank 1 "crashed" before uploading step 2
    assert ups[0].wait(30)
    s3 = S3Checkpoints(parse_s3_uri(uri))
    assert s3.latest() == tag_for(1) and s3.committed_tags() == [tag_for(1)]
    assert any("NOT committed" in m and "ranks [1]" in m for m in logs)


def test_truncated_file_falls_back_to_previous(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/r"
    up = CheckpointUploader(tmp_path / "ckpt", uri, AttemptRank(0, 1), log=lambda m: None)
    for step in (1, 2):
        up.submit(fake_checkpoint(tmp_path / "ckpt", step))
        assert up.wait(30)
    s3 = S3Checkpoints(parse_s3_uri(uri))
    key = f"r/{tag_for(2)}/attempt-none/rank_00000.pt"
    body = s3.client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    s3.client.put_object(Bucket=s3_bucket, Key=key, Body=body[: len(body) // 2])
    warnings = []
    tag_dir, tag = fetch_for_resume(uri, tmp_path / "dl", log=warnings.append)
    assert tag == tag_for(1) and (tag_dir / "rank_00000.pt").read_bytes().endswith(b"step 1\n")
    assert len(warnings) == 1 and "truncated" in warnings[0] and tag_for(1) in warnings[0]
    # same for a local checkpoints root
    (tmp_path / "ckpt" / tag_for(2) / "rank_00000.pt").write_bytes(b"")
    warnings.clear()
    assert fetch_for_resume(str(tmp_path / "ckpt"), tmp_path / "x", log=warnings.append)[1] == tag_for(1)
    assert len(warnings) == 1
    assert fetch_for_resume(f"s3://{s3_bucket}/empty", tmp_path / "y") is None


def test_server_outage_during_upload(tmp_path, s3_server, s3_bucket):
    uri = f"s3://{s3_bucket}/r"
    logs = []
    up = CheckpointUploader(tmp_path, uri, AttemptRank(0, 1), UploadPolicy(backoff=0.2, max_backoff=1.0),
                            log=logs.append)
    up.submit(fake_checkpoint(tmp_path, 1))
    assert up.wait(30)
    s3_server.cut()  # the network to S3 goes down; S3 itself keeps its objects
    try:
        t0 = time.time()
        up.submit(fake_checkpoint(tmp_path, 2))
        assert time.time() - t0 < 0.5  # the training loop does not wait for S3
        deadline = time.time() + 30
        while not up.errors and time.time() < deadline:
            time.sleep(0.2)
        assert up.errors and up.busy()  # failing, retrying, not committed
        assert json.loads((tmp_path / tag_for(2) / "COMMITTED").read_text())["step"] == 2
    finally:
        s3_server.restore()
    assert up.wait(60)
    s3 = S3Checkpoints(parse_s3_uri(uri))
    assert s3.latest() == tag_for(2)
    assert fetch_for_resume(uri, tmp_path / "dl", log=pytest.fail)[1] == tag_for(2)
