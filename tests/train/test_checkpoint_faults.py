"""The faults of a real cluster against the S3 commit protocol (moto server on 127.0.0.1): an older
attempt's manifest, an orphaned attempt still uploading, every kind of damage at resume, and errors
that no retry mends."""

from __future__ import annotations

import json
import time

import pytest

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.checkpoint_store import NoUsableCheckpointError, fetch_for_resume, tag_for
from mixvlp_ds.train.checkpoint_upload import AttemptRank, CheckpointUploader, UploadPolicy
from mixvlp_ds.train.s3sync import PreflightError, S3Checkpoints
from tests.train.test_checkpoint_store import fake_checkpoint


def uploader(root, uri, rank=0, world=1, attempt="a1", logs=None, **kw):
    return CheckpointUploader(root, uri, AttemptRank(rank, world, attempt), UploadPolicy(**kw),
                              log=(logs.append if logs is not None else lambda m: None))


def commit(up, root, step):
    up.submit(fake_checkpoint(root, step))
    assert up.wait(60)


def test_a_manifest_left_by_a_killed_attempt_is_never_committed(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/run"
    # attempt "old": rank 1 uploaded its part of step 4 and wrote its manifest, then was SIGKILLed
    old_root, new_root = tmp_path / "old", tmp_path / "new"
    fake_checkpoint(old_root, 4)
    old1 = uploader(old_root, uri, rank=1, world=2, attempt="old")
    old1.submit(tag_for(4))
    assert old1.wait(30) and tag_for(4) in old1.committed
    # attempt "new": rank 0 saves step 4 again; its rank 1 never reports (still starting, say)
    logs = []
    new0 = uploader(new_root, uri, rank=0, world=2, attempt="new", logs=logs, upload_timeout=3)
    new0.submit(fake_checkpoint(new_root, 4))
    assert new0.wait(30)
    s3 = S3Checkpoints(parse_s3_uri(uri))
    assert s3.committed_tags() == [] and s3.latest() is None          # the stale manifest did not count
    # it lies in the old attempt's own key space, which the new attempt never reads
    assert s3.list_keys(f"{tag_for(4)}/attempt-old/_manifests/") == [
        f"run/{tag_for(4)}/attempt-old/_manifests/rank_00001.json"]
    assert any("NOT committed" in m and "ranks [1]" in m for m in logs)


def test_an_orphaned_old_attempt_cannot_commit_or_move_latest(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/run"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    s3.write_lease({"attempt": "A"})
    a = uploader(tmp_path / "a", uri, attempt="A", logs=[])
    commit(a, tmp_path / "a", 2)
    assert s3.latest() == tag_for(2) and a.fenced is None
    s3.write_lease({"attempt": "B", "started": "now", "host": "node7"})  # the relaunch took over
    b = uploader(tmp_path / "b", uri, attempt="B")
    commit(b, tmp_path / "b", 4)
    a.submit(fake_checkpoint(tmp_path / "a", 6))    # the orphan, still training, tries again
    assert a.wait(30)
    assert s3.latest() == tag_for(4) and s3.committed_tags() == [tag_for(2), tag_for(4)]
    assert a.fenced and "owned by attempt B" in a.fenced and "node7" in a.fenced
    assert not s3.list_keys(f"{tag_for(6)}/")      # fenced before its first upload: nothing written


@pytest.fixture
def two_committed(tmp_path, s3_bucket):
    uri = f"s3://{s3_bucket}/run"
    up = uploader(tmp_path / "ckpt", uri)
    for step in (2, 4):
        commit(up, tmp_path / "ckpt", step)
    return uri, S3Checkpoints(parse_s3_uri(uri)), s3_bucket


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "committed_garbage",
                                    "committed_no_files"])
def test_damaged_newest_checkpoint_falls_back_with_a_warning_naming_the_object(damage, two_committed,
                                                                                tmp_path):
    uri, s3, bucket = two_committed
    key = f"run/{tag_for(4)}/attempt-a1/rank_00000.pt"
    if damage == "deleted":
        s3.client.delete_object(Bucket=bucket, Key=key)
    elif damage == "garbage":
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"\x00" * len(body))
    elif damage == "truncated":
        s3.client.put_object(Bucket=bucket, Key=key, Body=b"half")
    else:
        key = f"run/{tag_for(4)}/COMMITTED"
        body = b"{not json" if damage == "committed_garbage" else json.dumps({"tag": tag_for(4)}).encode()
        s3.client.put_object(Bucket=bucket, Key=key, Body=body)
    warnings = []
    tag_dir, tag = fetch_for_resume(uri, tmp_path / "dl", log=warnings.append)
    assert tag == tag_for(2) and (tag_dir / "rank_00000.pt").read_bytes().endswith(b"step 2\n")
    assert len(warnings) == 1 and key in warnings[0] and f"falling back to the previous committed one, " \
                                                          f"{tag_for(2)}" in warnings[0]


def test_a_garbage_latest_is_ignored_and_nothing_usable_says_what_was_tried(two_committed, tmp_path):
    uri, s3, bucket = two_committed
    s3.client.put_object(Bucket=bucket, Key="run/latest", Body=b"\xff\xfe garbage")
    warnings = []
    assert fetch_for_resume(uri, tmp_path / "dl", log=warnings.append)[1] == tag_for(4)
    assert warnings == [f"WARNING: {uri}/latest is unreadable ('\ufffd\ufffd garbage'): resuming from the "
                        f"newest committed checkpoint, {tag_for(4)}"]
    for step in (2, 4):
        s3.client.delete_object(Bucket=bucket,
                                Key=f"run/{tag_for(step)}/attempt-a1/mp_rank_00_model_states.pt")
    with pytest.raises(NoUsableCheckpointError, match=rf"no intact committed checkpoint under {uri}; tried: "
                                                      rf"{tag_for(4)} \(.*deleted.*\); {tag_for(2)} \("):
        fetch_for_resume(uri, tmp_path / "dl2", log=lambda m: None)


def test_local_damage_falls_back_too(tmp_path):
    root = tmp_path / "ckpt"
    for step in (2, 4, 6):
        fake_checkpoint(root, step)
    (root / tag_for(6) / "COMMITTED").write_text("{garbage")
    (root / tag_for(4) / "rank_00001.pt").unlink()
    warnings = []
    assert fetch_for_resume(str(root), tmp_path / "x", log=warnings.append)[1] == tag_for(2)
    assert len(warnings) == 2 and "COMMITTED is not a readable manifest" in warnings[0]
    assert "rank_00001.pt: missing bytes" in warnings[1]


def test_missing_bucket_fails_at_once_not_after_an_hour(tmp_path, s3_server):
    uri = "s3://no-such-bucket-here/run"
    up = uploader(tmp_path, uri, upload_timeout=3600, logs=[])
    t0 = time.time()
    with pytest.raises(PreflightError, match=r"S3 preflight for s3://no-such-bucket-here/run failed on "
                                             r"rank 0: .*NoSuchBucket"):
        up.preflight(timeout=60)
    up.submit(fake_checkpoint(tmp_path, 2))      # an upload gives up at once too
    assert up.wait(30)
    assert time.time() - t0 < 20
    assert any("NOT committed" in e and "NoSuchBucket" in e for e in up.errors)


def test_preflight_gives_up_on_an_unreachable_server_within_its_timeout(tmp_path, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    up = uploader(tmp_path, "s3://bucket/run", backoff=0.2)
    t0 = time.time()
    with pytest.raises(PreflightError, match="S3 preflight for s3://bucket/run failed"):
        up.preflight(timeout=3)
    assert time.time() - t0 < 30
