"""S3 primitives of the checkpoint commit protocol: upload-and-verify, manifests, commit, download.

Layout under `s3://bucket/prefix`:

    _lease.json                              the attempt that owns the prefix: {attempt, started, ...};
                                             each new attempt of a run writes it at start (fencing)
    step_00000100/<files>                    every rank's checkpoint files, relative paths kept
    step_00000100/_manifests/rank_00003.json what rank 3 uploaded and verified: {rank, attempt, files:
                                             [{path, size, sha256}]}
    step_00000100/COMMITTED                  written by rank 0 once every rank's manifest OF ITS ATTEMPT is
                                             there and every listed object has the listed size: the merged
                                             manifest
    latest                                   the tag of the newest committed checkpoint, written LAST

A reader trusts only tags with a readable COMMITTED marker, and checks each downloaded file's size
and sha256 against it, so neither a crash mid-upload, a truncated, deleted or garbage object, nor a
stale manifest of an older attempt can be restored silently. An attempt whose lease was taken over
writes nothing more (`FencedError`): one writer per prefix. Errors that retrying cannot mend (no
such bucket, access denied) are raised at once (`is_permanent`). Credentials come from boto3's
chain (mixvlp_ds.storage); nothing here logs them.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from mixvlp_ds.storage import S3Uri, s3_client

COMMITTED = "COMMITTED"
LATEST = "latest"
MANIFESTS = "_manifests"
LEASE = "_lease.json"
# S3 error codes that a retry cannot mend: report them at once instead of retrying for an hour
PERMANENT = {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
             "AllAccessDisabled", "InvalidBucketName", "AccountProblem", "InvalidToken", "ExpiredToken",
             "NotSignedUp"}


class ChecksumError(RuntimeError):
    """A checkpoint object does not match its manifest (truncated, corrupt, missing), or a marker
    (COMMITTED, latest) is unreadable."""


class FencedError(RuntimeError):
    """A newer attempt of the run owns the prefix (its lease): this attempt must not write."""


class PreflightError(RuntimeError):
    """The checkpoint prefix cannot be used (no such bucket, access denied, server unreachable)."""


def error_code(e: BaseException) -> str | None:
    """botocore ClientError's code ("NoSuchBucket", "404", ...), None for other errors."""
    return getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None


def is_permanent(e: BaseException) -> bool:
    return isinstance(e, FencedError) or error_code(e) in PERMANENT


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def describe_files(root: Path, relpaths: list[str]) -> list[dict]:
    """[{path, size, sha256}] for files under `root` (the manifest entries)."""
    return [{"path": p, "size": (root / p).stat().st_size, "sha256": sha256_file(root / p)}
            for p in relpaths]


def retry(fn: Callable, what: str, deadline: float, backoff: float, report: Callable[[str], None],
          max_backoff: float = 60.0):
    """Call `fn()` until it succeeds or `deadline` (time.time()) passes; exponential backoff + jitter.

    Every failure is reported (message only: botocore errors never carry credentials)."""
    delay = backoff
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any transport/server error is retried ...
            if is_permanent(e):  # ... but those no retry can mend
                raise RuntimeError(f"{what}: {type(e).__name__}: {e}") from e
            if time.time() + delay > deadline:
                raise RuntimeError(f"{what}: giving up after {attempt} attempts: {e}") from e
            report(f"{what}: attempt {attempt} failed ({type(e).__name__}: {e}); retrying in {delay:.1f}s")
            time.sleep(delay * (1 + 0.1 * random.random()))
            delay = min(delay * 2, max_backoff)


class S3Checkpoints:
    """One checkpoint prefix on S3. Thread-safe for one caller thread at a time per instance."""

    def __init__(self, uri: S3Uri, multipart_threshold: int = 64 << 20, client=None):
        self.uri = uri
        self.client = client or s3_client()
        from boto3.s3.transfer import TransferConfig

        # Multipart above the threshold: parallel parts, and a failed part is retried alone.
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=max(multipart_threshold // 4, 8 << 20))

    # -- writing ------------------------------------------------------------------------------
    def upload_verified(self, local: Path, key: str, entry: dict) -> None:
        """Upload one file and check the stored object's size (and our sha256 metadata)."""
        self.client.upload_file(str(local), self.uri.bucket, key, Config=self.transfer,
                                ExtraArgs={"Metadata": {"sha256": entry["sha256"]}})
        head = self.client.head_object(Bucket=self.uri.bucket, Key=key)
        stored_sha = head.get("Metadata", {}).get("sha256")
        if head["ContentLength"] != entry["size"] or stored_sha != entry["sha256"]:
            raise ChecksumError(f"s3://{self.uri.bucket}/{key}: stored object has size "
                                f"{head['ContentLength']}, expected {entry['size']}")

    def put_json(self, key: str, obj) -> None:
        self.client.put_object(Bucket=self.uri.bucket, Key=key, Body=json.dumps(obj, indent=1).encode())

    def write_manifest(self, tag: str, rank: int, entries: list[dict], attempt: str = "") -> None:
        self.put_json(self.uri.key(tag, MANIFESTS, f"rank_{rank:05d}.json"),
                      {"rank": rank, "attempt": attempt, "files": entries})

    def read_manifests(self, tag: str, attempt: str = "") -> tuple[dict[int, list[dict]], list[str]]:
        """({rank: files} of this attempt's manifests, [why each other manifest was ignored]): a
        manifest left by an older attempt (or unreadable) never counts towards the commit."""
        out, ignored = {}, []
        for key in self.list_keys(f"{tag}/{MANIFESTS}/"):
            try:
                body = json.loads(self.client.get_object(Bucket=self.uri.bucket, Key=key)["Body"].read())
                rank, files, theirs = int(body["rank"]), list(body["files"]), body.get("attempt", "")
            except (ValueError, KeyError, TypeError) as e:
                ignored.append(f"{key}: unreadable ({type(e).__name__})")
                continue
            if theirs != attempt:
                ignored.append(f"{key}: left by attempt {theirs or '?'}, this is {attempt or '?'}")
                continue
            out[rank] = files
        return out, ignored

    # -- the lease: one writer per prefix ------------------------------------------------------
    def write_lease(self, lease: dict) -> None:
        self.put_json(self.uri.key(LEASE), lease)

    def lease(self) -> dict | None:
        try:
            obj = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(LEASE))
            return json.loads(obj["Body"].read())
        except self.client.exceptions.NoSuchKey:
            return None
        except ValueError:
            return {"attempt": "<unreadable lease>"}

    def check_lease(self, attempt: str) -> None:
        """Raise FencedError unless `attempt` holds the lease (no lease at all: nobody took over)."""
        lease = self.lease()
        if lease is not None and lease.get("attempt") != attempt:
            raise FencedError(f"{self.uri} is owned by attempt {lease.get('attempt')} (started "
                              f"{lease.get('started', '?')} on {lease.get('host', '?')}); this attempt "
                              f"({attempt}) was fenced off and writes nothing more")

    # -- preflight -----------------------------------------------------------------------------
    def probe(self, name: str) -> None:
        """Write, read back and delete one small object: the bucket exists and we may use it."""
        key = self.uri.key("_preflight", name)
        body = f"mixvlp-ds preflight {name}".encode()
        self.client.put_object(Bucket=self.uri.bucket, Key=key, Body=body)
        got = self.client.get_object(Bucket=self.uri.bucket, Key=key)["Body"].read()
        self.client.delete_object(Bucket=self.uri.bucket, Key=key)
        if got != body:
            raise ChecksumError(f"s3://{self.uri.bucket}/{key}: read back {len(got)} bytes that differ from "
                                f"the {len(body)} written")

    def commit(self, tag: str, step: int, entries: list[dict], meta: dict) -> None:
        """Check every object's size, then write COMMITTED, then `latest` (the order is the protocol)."""
        for e in entries:
            head = self.client.head_object(Bucket=self.uri.bucket, Key=self.uri.key(tag, e["path"]))
            if head["ContentLength"] != e["size"]:
                raise ChecksumError(f"{tag}/{e['path']}: {head['ContentLength']} bytes on S3, "
                                    f"manifest says {e['size']}")
        self.put_json(self.uri.key(tag, COMMITTED), {"tag": tag, "step": step, "files": entries, **meta})
        self.client.put_object(Bucket=self.uri.bucket, Key=self.uri.key(LATEST), Body=tag.encode())

    # -- reading ------------------------------------------------------------------------------
    def list_keys(self, sub: str) -> list[str]:
        keys = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.uri.bucket, Prefix=self.uri.key(sub) + ("/" if sub.endswith("/") else ""))
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    def tags(self) -> list[str]:
        """All checkpoint tags (committed or not), oldest first."""
        prefix = self.uri.key("") + "/" if self.uri.prefix else ""
        tags = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.uri.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                tags.add(cp["Prefix"][len(prefix):].strip("/"))
        return sorted(t for t in tags if t.startswith("step_"))

    def committed_manifest(self, tag: str) -> dict | None:
        """The COMMITTED marker of `tag` (None: none); ChecksumError when it is not a manifest."""
        key = self.uri.key(tag, COMMITTED)
        try:
            obj = self.client.get_object(Bucket=self.uri.bucket, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        try:
            manifest = json.loads(obj["Body"].read())
            if not all({"path", "size", "sha256"} <= set(e) for e in manifest["files"]):
                raise KeyError("a file entry lacks path/size/sha256")
        except (ValueError, KeyError, TypeError) as e:
            raise ChecksumError(f"s3://{self.uri.bucket}/{key} is not a readable manifest "
                                f"({type(e).__name__}: {e}): corrupt") from e
        return manifest

    def committed_tags(self) -> list[str]:
        """Committed tags, oldest first."""
        return [t for t in self.tags() if self._exists(self.uri.key(t, COMMITTED))]

    def latest(self) -> str | None:
        """The tag `latest` names, or None (absent, or not a tag: garbage is ignored here; the
        committed tags decide)."""
        try:
            raw = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(LATEST))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        text = raw.decode("utf-8", "replace").strip()
        return text if text.startswith("step_") and text[5:].isdigit() else None

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.uri.bucket, Key=key)
            return True
        except self.client.exceptions.ClientError:
            return False

    def download(self, tag: str, dest: Path) -> dict:
        """Download committed `tag` into `dest` and verify every file; raises ChecksumError."""
        manifest = self.committed_manifest(tag)
        if manifest is None:
            raise FileNotFoundError(f"{self.uri}/{tag} has no {COMMITTED} marker")
        for e in manifest["files"]:
            local = dest / e["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            key = self.uri.key(tag, e["path"])
            try:
                self.client.download_file(self.uri.bucket, key, str(local), Config=self.transfer)
            except self.client.exceptions.ClientError as err:
                if is_permanent(err):
                    raise
                what = "deleted" if error_code(err) in ("404", "NoSuchKey") else str(err)
                raise ChecksumError(f"s3://{self.uri.bucket}/{key}: cannot be read ({error_code(err)}: "
                                    f"{what})") from err
            size = local.stat().st_size
            if size != e["size"]:
                raise ChecksumError(f"{self.uri}/{tag}/{e['path']}: {size} bytes, manifest says {e['size']} "
                                    f"(truncated)")
            if sha256_file(local) != e["sha256"]:
                raise ChecksumError(f"{self.uri}/{tag}/{e['path']}: sha256 differs from the manifest "
                                    f"(corrupt)")
        return manifest

    # -- retention ----------------------------------------------------------------------------
    def delete_tag(self, tag: str) -> None:
        keys = self.list_keys(f"{tag}/")
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.uri.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    def prune(self, keep_last: int) -> list[str]:
        """Delete all but the newest `keep_last` committed tags, and uncommitted tags older than the
        newest committed one (left-overs of crashed uploads). Called only right after a commit."""
        committed = self.committed_tags()
        if not committed:
            return []
        keep = set(committed[-keep_last:])
        newest = committed[-1]
        doomed = [t for t in self.tags() if t not in keep and t < newest]
        for t in doomed:
            self.delete_tag(t)
        return doomed
