"""S3 primitives of the checkpoint commit protocol: upload-and-verify, manifests, commit, download.

Layout under `s3://bucket/prefix`:

    step_00000100/<files>                    every rank's checkpoint files, relative paths kept
    step_00000100/_manifests/rank_00003.json what rank 3 uploaded and verified: [{path, size, sha256}]
    step_00000100/COMMITTED                  written by rank 0 once every rank's manifest is there and
                                             every listed object has the listed size: the merged manifest
    latest                                   the tag of the newest committed checkpoint, written LAST

A reader trusts only tags with a COMMITTED marker, and checks each downloaded file's size and sha256
against it, so neither a crash mid-upload nor a truncated object can be restored silently.
Credentials come from boto3's chain (mixvlp_ds.storage); nothing here logs them.
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


class ChecksumError(RuntimeError):
    """A downloaded checkpoint file does not match its manifest (truncated or corrupt)."""


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
        except Exception as e:  # noqa: BLE001 - any transport/server error is retried
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

    def write_manifest(self, tag: str, rank: int, entries: list[dict]) -> None:
        self.put_json(self.uri.key(tag, MANIFESTS, f"rank_{rank:05d}.json"), {"rank": rank, "files": entries})

    def read_manifests(self, tag: str) -> dict[int, list[dict]]:
        out = {}
        for key in self.list_keys(f"{tag}/{MANIFESTS}/"):
            body = json.loads(self.client.get_object(Bucket=self.uri.bucket, Key=key)["Body"].read())
            out[int(body["rank"])] = body["files"]
        return out

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
        try:
            obj = self.client.get_object(Bucket=self.uri.bucket, Key=self.uri.key(tag, COMMITTED))
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read())

    def committed_tags(self) -> list[str]:
        """Committed tags, oldest first."""
        return [t for t in self.tags() if self._exists(self.uri.key(t, COMMITTED))]

    def latest(self) -> str | None:
        try:
            return self.client.get_object(Bucket=self.uri.bucket,
                                          Key=self.uri.key(LATEST))["Body"].read().decode().strip()
        except self.client.exceptions.NoSuchKey:
            return None

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
            self.client.download_file(self.uri.bucket, self.uri.key(tag, e["path"]), str(local),
                                      Config=self.transfer)
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
