"""What a checkpoint prefix and folder guarantee beyond the happy path (moto S3 server on 127.0.0.1):

  - fencing holds for every object: an orphaned attempt stopped in the middle of an upload and
    continued after a newer attempt committed the same step writes nothing the newer one's
    COMMITTED names, and cannot replace that COMMITTED;
  - damage that passes a size check is caught at resume: a COMMITTED marker lacking an entry, a
    same-size garbage file (locally too: sha256, not sizes only), a garbage `latest` or one naming
    a missing or older step (the newest committed checkpoint wins, with a warning).
"""

from __future__ import annotations

import json
import threading

import pytest

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.checkpoint_store import (
    AttemptCheckpoints,
    commit_local,
    fetch_for_resume,
    files_digest,
    tag_for,
)
from mixvlp_ds.train.checkpoint_upload import AttemptRank, CheckpointUploader, UploadPolicy
from mixvlp_ds.train.s3sync import FencedError, S3Checkpoints
from tests.train.test_checkpoint_store import FILES


def fake(root, step: int, salt: str = "", elastic: bool = False, world: int | None = None) -> str:
    """A checkpoint of 2 ranks' files whose content depends on `salt` (which attempt wrote it)."""
    tag = tag_for(step)
    names = list(FILES) + (["elastic/meta.json", "elastic/params_00000.pt", "elastic/params_00001.pt"]
                           if elastic else [])
    for name in names:
        p = root / tag / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{name} at step {step} {salt}\n".encode() * 50)
    commit_local(root, tag, world)
    return tag


def uploaders(root, uri, attempt, world=2):
    return [CheckpointUploader(root, uri, AttemptRank(r, world, attempt),
                               UploadPolicy(backoff=0.2, upload_timeout=300), log=lambda m: None)
            for r in range(world)]


def run_all(ups, tag):
    for u in ups:
        u.submit(tag)
    for u in ups:
        assert u.wait(60)


# -- fencing ----------------------------------------------------------------------------------------
def test_an_orphan_stopped_mid_upload_cannot_touch_the_newer_attempts_commit(tmp_path, s3_bucket,
                                                                             monkeypatch):
    """Attempt A is stopped (think SIGSTOP) after the first file of rank 1's step-40 upload; attempt
    B takes the lease over, resumes from step 20 and commits step 40; then A continues."""
    uri = f"s3://{s3_bucket}/run"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    a_root, b_root = tmp_path / "a", tmp_path / "b"
    s3.write_lease({"attempt": "A"})
    a = uploaders(a_root, uri, "A")
    run_all(a, fake(a_root, 20, "by A"))
    # the stop: A's rank-1 upload thread halts after its first file, until released
    stopped, release, real = threading.Event(), threading.Event(), S3Checkpoints.upload_verified
    done_by_a1 = []

    def upload_verified(self, local, key, entry):
        real(self, local, key, entry)
        if str(local).startswith(str(a_root)) and owner(entry["path"]) == 1:
            done_by_a1.append(entry["path"])
            if len(done_by_a1) == 1:
                stopped.set()
                assert release.wait(60)

    from mixvlp_ds.train.checkpoint_store import owner_rank as owner
    monkeypatch.setattr(S3Checkpoints, "upload_verified", upload_verified)
    tag = fake(a_root, 40, "by A")
    for u in a:
        u.submit(tag)
    assert stopped.wait(30)
    # B: takes the lease, resumes from A's step 20, trains to 40, commits it
    s3.write_lease({"attempt": "B", "started": "later", "host": "node2"})
    assert fetch_for_resume(uri, tmp_path / "dl0", log=pytest.fail)[1] == tag_for(20)
    b = uploaders(b_root, uri, "B")
    run_all(b, fake(b_root, 40, "by B"))
    assert s3.latest() == tag_for(40) and s3.committed_manifest(tag)["attempt"] == "B"
    committed_b = s3.client.get_object(Bucket=s3_bucket, Key=f"run/{tag}/COMMITTED")["Body"].read()
    release.set()                                           # SIGCONT
    assert a[1].wait(60)
    assert len(done_by_a1) == 2                             # A's rank 1 did upload the rest of its files
    # B's commit is untouched and verifies; resume takes it
    assert s3.client.get_object(Bucket=s3_bucket, Key=f"run/{tag}/COMMITTED")["Body"].read() == committed_b
    warnings = []
    tag_dir, got = fetch_for_resume(uri, tmp_path / "dl", log=warnings.append)
    assert (got, warnings) == (tag, [])
    assert (tag_dir / "rank_00001.pt").read_bytes().endswith(b"at step 40 by B\n")
    # and A's rank 0, waiting for its attempt's manifests, is fenced off (not after upload_timeout)
    assert a[0].wait(60)
    assert a[0].fenced and "owned by attempt B" in a[0].fenced and tag not in a[0].committed, a[0].errors


def test_an_orphan_cannot_replace_a_committed_marker_but_the_lease_holder_can(tmp_path, s3_bucket):
    """The one write after the orphan's last lease check, COMMITTED itself, is conditional."""
    uri = f"s3://{s3_bucket}/run"
    s3 = AttemptCheckpoints(parse_s3_uri(uri))
    s3.write_lease({"attempt": "A"})
    a = uploaders(tmp_path / "a", uri, "A", world=1)
    run_all(a, fake(tmp_path / "a", 40, "by A"))            # A's complete step 40 (the orphan, later)
    a_entries = s3.committed_manifest(tag_for(40))["files"]
    s3.write_lease({"attempt": "B"})
    b = uploaders(tmp_path / "b", uri, "B", world=1)        # B re-trains step 40: replaces A's marker
    run_all(b, fake(tmp_path / "b", 40, "by B"))
    assert b[0].errors == [] and s3.committed_manifest(tag_for(40))["attempt"] == "B"
    # retention (after B's commit) removed A's objects inside the committed tag
    assert s3.list_keys(f"{tag_for(40)}/attempt-A/") == []
    # A, stopped after its lease check, uploads its files again and writes COMMITTED: refused, fenced
    for e in a_entries:
        key = f"run/{tag_for(40)}/attempt-A/{e['path']}"
        s3.upload_verified(tmp_path / "a" / tag_for(40) / e["path"], key, e)
    with pytest.raises(FencedError, match="owned by attempt B"):
        s3.commit_attempt(tag_for(40), 40, a_entries, {"world_size": 1, "attempt": "A"}, "A")
    assert s3.committed_manifest(tag_for(40))["attempt"] == "B"
    assert fetch_for_resume(uri, tmp_path / "dl", log=pytest.fail)[1] == tag_for(40)


# -- damage -----------------------------------------------------------------------------------------
@pytest.fixture
def s3_two(tmp_path, s3_bucket):
    """Steps 2 and 4 committed on S3 by one attempt of 2 ranks (elastic/ included)."""
    uri = f"s3://{s3_bucket}/run"
    ups = uploaders(tmp_path / "ckpt", uri, "a1")
    for step in (2, 4):
        run_all(ups, fake(tmp_path / "ckpt", step, elastic=True, world=2))
    return uri, AttemptCheckpoints(parse_s3_uri(uri)), s3_bucket


@pytest.fixture
def local_two(tmp_path):
    root = tmp_path / "ckpt"
    for step in (2, 4):
        fake(root, step, elastic=True, world=2)
    return root


def drop_entry(manifest: dict, path: str, redigest: bool) -> dict:
    manifest["files"] = [e for e in manifest["files"] if e["path"] != path]
    if redigest:
        manifest["files_sha256"] = files_digest(manifest["files"])
    return manifest


def fall_back(source, dest, expect_in_warning: str) -> None:
    warnings = []
    tag_dir, tag = fetch_for_resume(source, dest, log=warnings.append)
    assert tag == tag_for(2), warnings
    assert len(warnings) == 1 and expect_in_warning in warnings[0], warnings
    assert f"falling back to the previous committed one, {tag_for(2)}" in warnings[0]


@pytest.mark.parametrize("redigest", [False, True])
def test_a_committed_marker_lacking_one_entry_is_damage_on_s3(redigest, s3_two, tmp_path):
    uri, s3, bucket = s3_two
    key = f"run/{tag_for(4)}/COMMITTED"
    manifest = json.loads(s3.client.get_object(Bucket=bucket, Key=key)["Body"].read())
    path = "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"   # what only rank 1 would have read
    body = json.dumps(drop_entry(manifest, path, redigest)).encode()
    s3.client.put_object(Bucket=bucket, Key=key, Body=body)
    fall_back(uri, tmp_path / "dl", "lists no bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt" if redigest
              else "does not match its own checksum")


@pytest.mark.parametrize("redigest", [False, True])
def test_a_committed_marker_lacking_one_entry_is_damage_locally(redigest, local_two, tmp_path):
    marker = local_two / tag_for(4) / "COMMITTED"
    manifest = drop_entry(json.loads(marker.read_text()), "elastic/params_00001.pt", redigest)
    marker.write_text(json.dumps(manifest))
    fall_back(str(local_two), tmp_path / "x", "lists no elastic/params_00001.pt" if redigest
              else "does not match its own checksum")


@pytest.mark.parametrize("name", ["rank_00000.pt", "elastic/params_00000.pt"])
def test_same_size_garbage_in_a_local_checkpoint_is_caught_by_its_sha256(name, local_two, tmp_path):
    p = local_two / tag_for(4) / name
    p.write_bytes(b"\x00" * p.stat().st_size)
    fall_back(str(local_two), tmp_path / "x", f"{p}: sha256 differs from the manifest (corrupt)")


@pytest.mark.parametrize("latest", [b"\xff garbage", b"step_00000006", b"step_00000002", None])
def test_latest_is_a_hint_the_newest_committed_wins_with_a_warning(latest, s3_two, local_two, tmp_path):
    uri, s3, bucket = s3_two
    want = {b"\xff garbage": "is unreadable",
            b"step_00000006": "names step_00000006, which is not a committed checkpoint there",
            b"step_00000002": "names step_00000002, older than the newest committed one",
            None: "is missing"}[latest]
    for source in (uri, str(local_two)):
        if source == uri and latest is None:
            s3.client.delete_object(Bucket=bucket, Key="run/latest")
        elif source == uri:
            s3.client.put_object(Bucket=bucket, Key="run/latest", Body=latest)
        elif latest is None:
            (local_two / "latest").unlink()
        else:
            (local_two / "latest").write_bytes(latest)
        warnings = []
        assert fetch_for_resume(source, tmp_path / "dl", log=warnings.append)[1] == tag_for(4), source
        assert warnings == [f"WARNING: {source}/latest {want}" + warnings[0].split(want)[1]], warnings
        assert warnings[0].endswith(f": resuming from the newest committed checkpoint, {tag_for(4)}")
