"""The background S3 uploader of one rank: its files of a locally committed checkpoint, then (rank
0) the commit on S3 (train/checkpoint_store.py: the layouts and the protocol).

After the local save, every rank uploads the files it owns (`owner_rank`) from a background thread
into its attempt's own key space: this is how each node uploads exactly its own ranks' files, with no
shared file system, and why an older attempt still running (fenced off, but not yet aware of it) can
never touch a newer attempt's objects. Each rank then writes its manifest (size + sha256 per file);
rank 0's thread waits until all `world_size` manifests of this attempt are on S3 (the cross-node
barrier, held on S3 so that training never blocks on it), checks the lease, checks every object
(size + sha256), writes COMMITTED (a conditional put: it creates the marker, and replaces another
attempt's only while holding the lease) and then `latest`. Still holding the lease, it then deletes
committed checkpoints beyond `keep_last`, uncommitted leftovers older than the new one and other
attempts' objects inside the kept ones. Transient errors are retried with exponential backoff until
`upload_timeout`, reported, and the checkpoint stays uncommitted; training goes on. Errors no retry
mends (no such bucket, access denied) and a lost lease (a newer attempt of the run owns the prefix:
`fenced`) stop the upload at once.

Bounded: at most ONE upload is pending per rank. When the next checkpoint is due while one is still
uploading, train.upload_busy=wait (default) blocks the training loop until it is done; =skip saves
the new checkpoint locally but does not upload it (a warning says so). The CheckpointManager
(checkpoint.py) decides it collectively, so that all ranks wait or skip together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mixvlp_ds.storage import parse_s3_uri, s3_client
from mixvlp_ds.train.checkpoint_store import (
    AttemptCheckpoints,
    attempt_dir,
    list_files,
    local_manifest,
    owner_rank,
    step_of,
)
from mixvlp_ds.train.s3sync import (
    ChecksumError,
    FencedError,
    PreflightError,
    S3Checkpoints,
    describe_files,
    retry,
)


@dataclass(frozen=True)
class UploadPolicy:
    """How checkpoints are uploaded: retention, retries, deadline, multipart (a run's: `of(run.train)`)."""

    keep_last: int = 3                   # committed checkpoints kept on S3 (retention after a commit)
    backoff: float = 1.0                 # first retry delay, doubled up to max_backoff
    max_backoff: float = 60.0
    upload_timeout: float = 3600.0       # seconds of retrying before an upload is given up
    multipart_threshold: int = 64 << 20  # bytes; larger files go multipart

    @classmethod
    def of(cls, train) -> UploadPolicy:
        """From a TrainConfig: train.keep_last, train.upload_backoff, train.upload_timeout."""
        return cls(keep_last=train.keep_last, backoff=train.upload_backoff,
                   upload_timeout=train.upload_timeout)


@dataclass(frozen=True)
class AttemptRank:
    """Who uploads: rank `rank` of the `world_size` ranks of attempt `attempt` (its id: manifests
    carry it, and the lease must name it). Rank 0 commits once all world_size manifests are there."""

    rank: int
    world_size: int
    attempt: str = ""


class CheckpointUploader:
    """One rank's background S3 uploader (at most one pending checkpoint)."""

    def __init__(self, root: Path, uri: str, who: AttemptRank, policy: UploadPolicy = UploadPolicy(),
                 log: Callable[[str], None] = print):
        self.root, self.uri, self.policy, self.log = Path(root), parse_s3_uri(uri), policy, log
        self.rank, self.world_size, self.attempt = who.rank, who.world_size, who.attempt
        self.fenced: str | None = None    # why this attempt may not write any more (a newer one took over)
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

    def submit(self, tag: str, meta: dict | None = None, deadline: float | None = None) -> None:
        """Start uploading `tag` (already saved locally by every rank) in the background, by
        `deadline` (time.time() seconds; default upload_timeout from now)."""
        if self.busy():
            raise RuntimeError(f"upload of {self.pending_tag} still pending (callers wait or skip first)")
        self.pending_tag = tag
        self._thread = threading.Thread(target=self._run, args=(tag, dict(meta or {}), deadline),
                                        name=f"ckpt-upload-{tag}", daemon=True)
        self._thread.start()

    def _describe(self, tag_dir: Path, mine: list[str]) -> list[dict]:
        """Manifest entries of this rank's files: the sha256s of the local COMMITTED marker (hashed
        once, at the local commit), or hashed here when it has none."""
        try:
            known = {e["path"]: e for e in local_manifest(tag_dir)["files"] if e["sha256"]}
        except ChecksumError:
            known = {}
        if all(p in known and known[p]["size"] == (tag_dir / p).stat().st_size for p in mine):
            return [dict(known[p]) for p in mine]
        return describe_files(tag_dir, mine)

    def _report(self, msg: str) -> None:
        self.errors.append(msg)
        self.log(f"[checkpoint upload, rank {self.rank}] {msg}")

    def preflight(self, timeout: float = 60.0) -> None:
        """Before training: write, read and delete a probe object (retrying transient errors for
        `timeout` s), so a missing bucket, denied access or an unreachable server fails the run at
        its start instead of leaving it without checkpoints. Raises PreflightError naming the URI."""
        policy = self.policy
        s3 = S3Checkpoints(self.uri, policy.multipart_threshold, client=s3_client(max_attempts=2))
        deadline = time.time() + min(timeout, policy.upload_timeout)
        try:
            retry(lambda: s3.probe(f"rank_{self.rank:05d}-{self.attempt or 'x'}"),
                  "write/read/delete a probe", deadline, policy.backoff, lambda m: None, policy.max_backoff)
        except Exception as e:  # noqa: BLE001 - one message that says where and what
            raise PreflightError(f"S3 preflight for {self.uri} failed on rank {self.rank}: {e}") from e

    def _run(self, tag: str, meta: dict, deadline: float | None = None) -> None:
        try:
            self._upload(tag, meta, deadline)
        except FencedError as e:
            self.fenced = str(e)
            self._report(f"{tag} NOT committed: {e}")
        except Exception as e:  # noqa: BLE001 - reported; training goes on without this checkpoint
            if isinstance(e.__cause__, FencedError):
                self.fenced = str(e.__cause__)
            self._report(f"{tag} NOT committed: {e}")

    def _upload(self, tag: str, meta: dict, deadline: float | None = None) -> None:
        deadline = deadline or time.time() + self.policy.upload_timeout
        tag_dir = self.root / tag
        mine = [p for p in list_files(tag_dir) if owner_rank(p) == self.rank]
        entries = self._describe(tag_dir, mine)
        # the client is made here, in this thread: boto3 clients are made per thread
        s3 = AttemptCheckpoints(self.uri, self.policy.multipart_threshold, client=s3_client(max_attempts=3))
        space = f"{tag}/{attempt_dir(self.attempt)}"  # this attempt's own keys: no other attempt writes here

        def again(fn, what):
            return retry(fn, what, deadline, self.policy.backoff, self._report, self.policy.max_backoff)

        again(lambda: s3.check_lease(self.attempt), f"{tag}: check the lease")
        for e in entries:
            key = self.uri.key(space, e["path"])
            again(lambda e=e, key=key: s3.upload_verified(tag_dir / e["path"], key, e), f"upload {e['path']}")
        again(lambda: s3.write_manifest(space, self.rank, entries, self.attempt), "write manifest")
        if self.rank != 0:
            self.committed.append(tag)
            return
        # rank 0: the barrier across nodes is "all manifests of this attempt present", polled on S3
        delay, said = 0.2, set()
        while True:
            manifests, ignored = again(lambda: s3.read_manifests(space, self.attempt),
                                       f"{tag}: read manifests")
            for why in set(ignored) - said:
                self._report(f"{tag}: ignoring manifest {why}")
            said |= set(ignored)
            missing = sorted(set(range(self.world_size)) - set(manifests))
            if not missing:
                break
            # fenced meanwhile? (a newer attempt's retention may also have removed this attempt's keys)
            again(lambda: s3.check_lease(self.attempt), f"{tag}: check the lease")
            if time.time() > deadline:
                raise TimeoutError(f"ranks {missing[:8]} never reported their files for {tag} in this "
                                   f"attempt ({self.attempt or '?'})")
            time.sleep(delay)
            delay = min(delay * 1.5, 5.0)
        files = [e for r in sorted(manifests) for e in manifests[r]]
        again(lambda: s3.check_lease(self.attempt), f"{tag}: check the lease")  # right before COMMITTED
        again(lambda: s3.commit_attempt(tag, step_of(tag), files,
                                        {"world_size": self.world_size, "attempt": self.attempt, **meta},
                                        self.attempt),
              f"{tag}: commit")
        self.committed.append(tag)
        self.log(f"[checkpoint] committed s3://{self.uri.bucket}/{self.uri.key(tag)} ({len(files)} files)")
        try:
            s3.check_lease(self.attempt)  # an attempt fenced off meanwhile deletes nothing
            doomed = s3.prune_attempts(self.policy.keep_last)
            if doomed:
                self.log(f"[checkpoint] deleted old S3 checkpoints {doomed}")
        except Exception as e:  # noqa: BLE001 - retention failures never touch the new checkpoint
            self._report(f"retention after {tag} failed: {e}")
