"""Checkpoints on local disk, mirrored to S3 in the background with a commit protocol.

Local layout (`root` = <output_dir>/checkpoints):

    root/step_00000100/...        DeepSpeed's files (model, optimizer shards), rank_*.pt (RNG + data
                                  pipeline state per rank), elastic/ (train/universal.py: the same
                                  weights and Adam moments for any world size), run_config.yaml,
                                  ds_config.json, tokenizer/
    root/step_00000100/COMMITTED  {files: {path: size}}, written by rank 0 after every rank saved
    root/latest                   newest locally committed tag, written after COMMITTED

S3 (see `s3sync`): after the local save, every rank uploads the files it owns (`owner_rank`) from a
background thread: this is how each node uploads exactly its own ranks' files, with no shared file
system. Each rank then writes its manifest (size + sha256 per file, and the attempt id); rank 0's
thread waits until all `world_size` manifests OF THIS ATTEMPT are on S3 (the cross-node barrier,
held on S3 so that training never blocks on it), checks the objects, writes COMMITTED and then
`latest`, then deletes checkpoints beyond `keep_last`. Transient errors are retried with exponential
backoff until `upload_timeout`, reported, and the checkpoint stays uncommitted; training goes on.
Errors no retry mends (no such bucket, access denied) and a lost lease (a newer attempt of the run
owns the prefix: `fenced`) stop the upload at once.

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
from mixvlp_ds.train.s3sync import (
    COMMITTED,
    LATEST,
    ChecksumError,
    FencedError,
    PreflightError,
    S3Checkpoints,
    describe_files,
    retry,
)


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("_")[1])


def owner_rank(relpath: str) -> int:
    """Which rank wrote a checkpoint file: DeepSpeed's `*zero_pp_rank_<r>_*`, our `rank_<r>.pt` and
    `elastic/params_<r>.pt`; everything else (model states of ZeRO-1/2, config, tokenizer) is rank 0's."""
    m = (re.search(r"zero_pp_rank_(\d+)_", relpath)
         or re.search(r"(?:^|/)(?:rank|elastic/params)_(\d+)\.pt$", relpath))
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
    try:
        manifest = json.loads((tag_dir / COMMITTED).read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise ChecksumError(f"{tag_dir / COMMITTED} is not a readable manifest ({type(e).__name__}): "
                            f"corrupt") from e
    for rel, size in files.items():
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
                 multipart_threshold: int = 64 << 20, log: Callable[[str], None] = print, attempt: str = ""):
        self.root, self.rank, self.world_size, self.keep_last = Path(root), rank, world_size, keep_last
        self.attempt = attempt            # this attempt's id: manifests carry it, the lease must name it
        self.fenced: str | None = None    # why this attempt may not write any more (a newer one took over)
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

    def preflight(self, timeout: float = 60.0) -> None:
        """Before training: write, read and delete a probe object (retrying transient errors for
        `timeout` s), so a missing bucket, denied access or an unreachable server fails the run at
        its start instead of leaving it without checkpoints. Raises PreflightError naming the URI."""
        s3 = S3Checkpoints(self.uri, self.multipart_threshold, client=s3_client(max_attempts=2))
        deadline = time.time() + min(timeout, self.upload_timeout)
        try:
            retry(lambda: s3.probe(f"rank_{self.rank:05d}-{self.attempt or 'x'}"),
                  "write/read/delete a probe", deadline, self.backoff, lambda m: None, self.max_backoff)
        except Exception as e:  # noqa: BLE001 - one message that says where and what
            raise PreflightError(f"S3 preflight for {self.uri} failed on rank {self.rank}: {e}") from e

    def _run(self, tag: str, meta: dict) -> None:
        try:
            self._upload(tag, meta)
        except FencedError as e:
            self.fenced = str(e)
            self._report(f"{tag} NOT committed: {e}")
        except Exception as e:  # noqa: BLE001 - reported; training goes on without this checkpoint
            if isinstance(e.__cause__, FencedError):
                self.fenced = str(e.__cause__)
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

        again(lambda: s3.check_lease(self.attempt), f"{tag}: check the lease")
        for e in entries:
            key = self.uri.key(tag, e["path"])
            again(lambda e=e, key=key: s3.upload_verified(tag_dir / e["path"], key, e), f"upload {e['path']}")
        again(lambda: s3.write_manifest(tag, self.rank, entries, self.attempt), "write manifest")
        if self.rank != 0:
            self.committed.append(tag)
            return
        # rank 0: the barrier across nodes is "all manifests of this attempt present", polled on S3
        delay, said = 0.2, set()
        while True:
            manifests, ignored = again(lambda: s3.read_manifests(tag, self.attempt), f"{tag}: read manifests")
            for why in set(ignored) - said:
                self._report(f"{tag}: ignoring manifest {why}")
            said |= set(ignored)
            missing = sorted(set(range(self.world_size)) - set(manifests))
            if not missing:
                break
            if time.time() > deadline:
                raise TimeoutError(f"ranks {missing[:8]} never reported their files for {tag} in this "
                                   f"attempt ({self.attempt or '?'})")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        files = [e for r in sorted(manifests) for e in manifests[r]]
        again(lambda: s3.check_lease(self.attempt), f"{tag}: check the lease")  # right before COMMITTED
        again(lambda: s3.commit(tag, step_of(tag), files,
                                {"world_size": self.world_size, "attempt": self.attempt, **meta}),
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
class NoUsableCheckpointError(RuntimeError):
    """Committed checkpoints exist at the source, but none of them is intact."""


# what a damaged checkpoint raises while being read: each one means "try the previous checkpoint"
DAMAGE = (ChecksumError, FileNotFoundError, ValueError, KeyError, TypeError, OSError)


def fetch_for_resume(source: str, dest: Path, log: Callable[[str], None] = print) -> tuple[Path, str] | None:
    """Find the newest committed checkpoint at `source` (s3:// URI, a checkpoints root, or one tag
    directory), verify it (download into `dest` for S3), and fall back to the previous committed one,
    with a warning that names the damaged object, when anything is wrong with it: a truncated,
    garbage or deleted file, an unreadable COMMITTED marker. `latest` only orders the candidates (a
    garbage `latest` is ignored). Returns (tag_dir, tag), or None when `source` holds no committed
    checkpoint; NoUsableCheckpointError (listing what was tried) when none is intact."""
    if source.startswith("s3://"):
        s3 = S3Checkpoints(parse_s3_uri(source))
        candidates = s3.committed_tags()[::-1]
        latest = s3.latest()
        if latest in candidates:  # `latest` first; a newer committed tag would mean a crash in between
            candidates.remove(latest)
            candidates.insert(0, latest)

        def load(tag: str) -> Path:
            shutil.rmtree(dest / tag, ignore_errors=True)
            s3.download(tag, dest / tag)
            return dest / tag
    else:
        root = Path(source)
        if (root / COMMITTED).is_file():  # one tag directory
            verify_local(root)
            return root, root.name
        candidates = local_committed_tags(root)[::-1]

        def load(tag: str) -> Path:
            verify_local(root / tag)
            return root / tag
    tried = []
    for i, tag in enumerate(candidates):
        try:
            return load(tag), tag
        except DAMAGE as e:
            tried.append(f"{tag} ({e})")
            nxt = candidates[i + 1] if i + 1 < len(candidates) else None
            log(f"WARNING: checkpoint {source.rstrip('/')}/{tag} is unusable: {e}; "
                + (f"falling back to the previous committed one, {nxt}" if nxt else "no other left"))
            if source.startswith("s3://"):
                shutil.rmtree(dest / tag, ignore_errors=True)
    if candidates:
        raise NoUsableCheckpointError(f"no intact committed checkpoint under {source}; tried: "
                                      f"{'; '.join(tried)}")
    return None
