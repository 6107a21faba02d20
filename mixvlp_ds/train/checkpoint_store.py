"""Checkpoints on local disk, mirrored to S3 in the background with a commit protocol.

Local layout (`root` = <output_dir>/checkpoints):

    root/step_00000100/...        DeepSpeed's files (model, optimizer shards), rank_*.pt (RNG + data
                                  pipeline state per rank), run_config.yaml, ds_config.json, tokenizer/
    root/step_00000100/COMMITTED  {files: {path: size}}, written by rank 0 after every rank saved
    root/latest                   newest locally committed tag, written after COMMITTED

S3 (see `s3sync`): after the local save, every rank uploads the files it owns (`owner_rank`) from a
background thread: this is how each node uploads exactly its own ranks' files, with no shared file
system. Each rank then writes its manifest (size + sha256 per file); rank 0's thread waits until all
`world_size` manifests are on S3 (the cross-node barrier, held on S3 so that training never blocks
on it), checks the objects, writes COMMITTED and then `latest`, then deletes checkpoints beyond
`keep_last`. Errors are retried with exponential backoff until `upload_timeout`, reported, and the
checkpoint stays uncommitted; training goes on.

Bounded: at most ONE upload is pending per rank. When the next checkpoint is due while one is still
uploading, policy "wait" (default) blocks the training loop until it is done; policy "skip" saves
the new checkpoint locally but does not upload it (a warning says so). The decision is taken
collectively (`pretrain.py`) so that all ranks wait or skip together.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mixvlp_ds.storage import parse_s3_uri, s3_client
from mixvlp_ds.train.s3sync import COMMITTED, LATEST, ChecksumError, S3Checkpoints, describe_files, retry


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("_")[1])


def owner_rank(relpath: str) -> int:
    """Which rank wrote a checkpoint file: DeepSpeed's `*zero_pp_rank_<r>_*`, our `rank_<r>.pt`;
    everything else (model states of ZeRO-1/2, config, tokenizer) is rank 0's."""
    m = re.search(r"zero_pp_rank_(\d+)_", relpath) or re.search(r"(?:^|/)rank_(\d+)\.pt$", relpath)
    return int(m.group(1)) if m else 0


def list_files(tag_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*")
                  if p.is_file() and p.name != COMMITTED)


# -- local commit -----------------------------------------------------------------------------------
def commit_local(root: Path, tag: str) -> None:
    """Rank 0, after every rank saved: COMMITTED (file sizes) in the tag dir, then root/latest."""
    tag_dir = root / tag
    files = {p: (tag_dir / p).stat().st_size for p in list_files(tag_dir)}
    (tag_dir / COMMITTED).write_text(json.dumps({"tag": tag, "step": step_of(tag), "files": files}))
    tmp = root / (LATEST + ".tmp")
    tmp.write_text(tag)
    tmp.replace(root / LATEST)  # atomic: a reader sees the old or the new tag, never half


def local_committed_tags(root: Path) -> list[str]:
    return sorted(p.parent.name for p in root.glob(f"step_*/{COMMITTED}"))


def verify_local(tag_dir: Path) -> None:
    manifest = json.loads((tag_dir / COMMITTED).read_text())
    for rel, size in manifest["files"].items():
        p = tag_dir / rel
        if not p.is_file() or p.stat().st_size != size:
            have = p.stat().st_size if p.is_file() else "missing"
            raise ChecksumError(f"{p}: {have} bytes, manifest says {size} (truncated or missing)")


def prune_local(root: Path, keep_last: int, protect: set[str] = frozenset()) -> list[str]:
    """Delete local checkpoints beyond the newest `keep_last` committed ones (never `protect`ed
    tags, i.e. those still uploading), and uncommitted leftovers older than the newest commit."""
    committed = local_committed_tags(root)
    if not committed:
        return []
    keep = set(committed[-keep_last:]) | set(protect)
    doomed = [p.name for p in sorted(root.glob("step_*")) if p.name not in keep and p.name < committed[-1]]
    for t in doomed:
        shutil.rmtree(root / t, ignore_errors=True)
    return doomed


# -- the background uploader ------------------------------------------------------------------------
class CheckpointUploader:
    """One rank's background S3 uploader (at most one pending checkpoint)."""

    def __init__(self, root: Path, uri: str, rank: int, world_size: int, keep_last: int = 3,
                 backoff: float = 1.0, max_backoff: float = 60.0, upload_timeout: float = 3600.0,
                 multipart_threshold: int = 64 << 20, log: Callable[[str], None] = print):
        self.root, self.rank, self.world_size, self.keep_last = Path(root), rank, world_size, keep_last
        self.uri = parse_s3_uri(uri)
        self.backoff, self.max_backoff, self.upload_timeout = backoff, max_backoff, upload_timeout
        self.multipart_threshold = multipart_threshold
        self.log = log
        self.errors: list[str] = []       # every failure report, for tests and the end-of-run summary
        self.committed: list[str] = []    # tags this rank committed (rank 0) or fully uploaded (others)
        self._thread: threading.Thread | None = None
        self.pending_tag: str | None = None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the pending upload finishes; True when nothing is pending any more."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
            self._thread, self.pending_tag = None, None
        return True

    def submit(self, tag: str, meta: dict | None = None) -> None:
        """Start uploading `tag` (already saved locally by every rank) in the background."""
        if self.busy():
            raise RuntimeError(f"upload of {self.pending_tag} still pending (callers wait or skip first)")
        self.pending_tag = tag
        self._thread = threading.Thread(target=self._run, args=(tag, dict(meta or {})),
                                        name=f"ckpt-upload-{tag}", daemon=True)
        self._thread.start()

    def _report(self, msg: str) -> None:
        self.errors.append(msg)
        self.log(f"[checkpoint upload, rank {self.rank}] {msg}")

    def _run(self, tag: str, meta: dict) -> None:
        try:
            self._upload(tag, meta)
        except Exception as e:  # noqa: BLE001 - reported; training goes on without this checkpoint
            self._report(f"{tag} NOT committed: {e}")

    def _upload(self, tag: str, meta: dict) -> None:
        deadline = time.time() + self.upload_timeout
        tag_dir = self.root / tag
        mine = [p for p in list_files(tag_dir) if owner_rank(p) == self.rank]
        entries = describe_files(tag_dir, mine)
        # the client is made here, in this thread: boto3 sessions are not shared across threads
        s3 = S3Checkpoints(self.uri, self.multipart_threshold, client=s3_client(max_attempts=3))

        def again(fn, what):
            return retry(fn, what, deadline, self.backoff, self._report, self.max_backoff)

        for e in entries:
            key = self.uri.key(tag, e["path"])
            again(lambda e=e, key=key: s3.upload_verified(tag_dir / e["path"], key, e), f"upload {e['path']}")
        again(lambda: s3.write_manifest(tag, self.rank, entries), "write manifest")
        if self.rank != 0:
            self.committed.append(tag)
            return
        # rank 0: the barrier across nodes is "all manifests present", polled on S3 (not an error)
        delay = 0.2
        while True:
            manifests = again(lambda: s3.read_manifests(tag), f"{tag}: read manifests")
            missing = sorted(set(range(self.world_size)) - set(manifests))
            if not missing:
                break
            if time.time() > deadline:
                raise TimeoutError(f"ranks {missing[:8]} never reported their files for {tag}")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        files = [e for r in sorted(manifests) for e in manifests[r]]
        again(lambda: s3.commit(tag, step_of(tag), files, {"world_size": self.world_size, **meta}),
              f"{tag}: commit")
        self.committed.append(tag)
        self.log(f"[checkpoint] committed s3://{self.uri.bucket}/{self.uri.key(tag)} ({len(files)} files)")
        try:
            doomed = s3.prune(self.keep_last)
            if doomed:
                self.log(f"[checkpoint] deleted old S3 checkpoints {doomed}")
        except Exception as e:  # noqa: BLE001 - retention failures never touch the new checkpoint
            self._report(f"retention after {tag} failed: {e}")


# -- resume -----------------------------------------------------------------------------------------
def fetch_for_resume(source: str, dest: Path, log: Callable[[str], None] = print) -> tuple[Path, str] | None:
    """Find the newest committed checkpoint at `source` (s3:// URI, a checkpoints root with `latest`,
    or one tag directory), verify it (download into `dest` for S3), and fall back to the previous
    committed one, with a warning, when a file is truncated or corrupt. Returns (tag_dir, tag), or
    None when `source` holds no committed checkpoint."""
    if source.startswith("s3://"):
        s3 = S3Checkpoints(parse_s3_uri(source))
        candidates = s3.committed_tags()[::-1]
        latest = s3.latest()
        if latest in candidates:  # `latest` first; a newer committed tag would mean a crash in between
            candidates.remove(latest)
            candidates.insert(0, latest)
        for i, tag in enumerate(candidates):
            try:
                s3.download(tag, dest / tag)
                return dest / tag, tag
            except ChecksumError as e:
                nxt = candidates[i + 1] if i + 1 < len(candidates) else None
                log(f"WARNING: checkpoint {source}/{tag} is unusable: {e}; "
                    + (f"falling back to the previous committed one, {nxt}" if nxt else "no other left"))
                shutil.rmtree(dest / tag, ignore_errors=True)
        if candidates:
            raise ChecksumError(f"no intact committed checkpoint under {source}")
        return None
    root = Path(source)
    if (root / COMMITTED).is_file():
        verify_local(root)
        return root, root.name
    candidates = local_committed_tags(root)[::-1]
    for i, tag in enumerate(candidates):
        try:
            verify_local(root / tag)
            return root / tag, tag
        except ChecksumError as e:
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            log(f"WARNING: checkpoint {root / tag} is unusable: {e}; "
                + (f"falling back to {nxt}" if nxt else "no other left"))
    if candidates:
        raise ChecksumError(f"no intact committed checkpoint under {root}")
    return None
