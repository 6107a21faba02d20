"""S3 primitives of the checkpoint commit protocol: upload-and-verify, manifests, the lease, listing,
verified download, retention.

The layout they serve is written by `checkpoint_store.AttemptCheckpoints` (each attempt's files and
manifests under `step_X/attempt-<id>/`, one `step_X/COMMITTED` naming the attempt); what lives at
the prefix itself:

    _lease.json                              the attempt that owns the prefix: {attempt, started, ...};
                                             each new attempt of a run writes it at start (fencing)
    step_00000100/COMMITTED                  the merged manifest: {tag, step, files: [{path, size,
                                             sha256}], ...}, written once every rank's files are there
    latest                                   the tag of the newest committed checkpoint, written LAST

A reader trusts only tags with a readable COMMITTED marker, and checks each downloaded file's size
and sha256 against it, so neither a crash mid-upload, a truncated, deleted or garbage object, nor a
stale manifest of an older attempt can be restored silently. An attempt whose lease was taken over
writes nothing more (`FencedError`): one writer per prefix. Errors that retrying cannot mend (no
such bucket, access denied) are raised at once (`is_permanent`). Credentials come from boto3's
chain (mixvlp_ds.storage); nothing here logs them.

Errors are told apart by their TYPE (`classify`): "permanent" (a ClientError whose code no retry
mends, missing credentials, a fenced attempt, a local file that is not there, and anything that is
not an S3 or network error at all: a bug is reported at once, not retried for an hour),
"unreachable" (the endpoint did not answer: botocore's connect/read timeouts, connection errors)
and "transient" (any other S3 or network error: 5xx, throttling, a checksum mismatch). Every
request keeps a deadline: inside `retry(..., deadline, ...)` each request of `S3Checkpoints` goes
through a client whose connect/read timeouts and attempts fit the time left (`_sized_client`), so a
server that stops answering costs the deadline plus about a second, never read_timeout x attempts
per request. Outside a deadline a request gets at most `CALL_BUDGET` seconds, and only
`DOWN_BUDGET` while the last retry in this process gave up on an unreachable endpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from botocore.exceptions import ClientError

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
    """botocore ClientError's code ("NoSuchBucket", "404", ...), None for other errors (botocore's
    timeouts and connection errors carry no response, or response=None)."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return None
    return (response.get("Error") or {}).get("Code")


def _causes(e: BaseException):
    """e, then what it was raised from or while handling (boto3 wraps a ClientError of an upload in
    S3UploadFailedError without `from`), at most 8 deep."""
    seen = 0
    while e is not None and seen < 8:
        yield e
        e = e.__cause__ or e.__context__
        seen += 1


def _classify_one(e: BaseException) -> str | None:
    from botocore import exceptions as be

    if isinstance(e, FencedError):
        return "permanent"
    if isinstance(e, be.ClientError):
        return "permanent" if error_code(e) in PERMANENT else "transient"
    if isinstance(e, (be.NoCredentialsError, be.PartialCredentialsError, be.CredentialRetrievalError,
                      be.ParamValidationError, be.NoRegionError)):
        return "permanent"
    if isinstance(e, (be.ConnectTimeoutError, be.ReadTimeoutError, be.EndpointConnectionError,
                      be.ConnectionClosedError, be.ConnectionError, TimeoutError, ConnectionError)):
        return "unreachable"
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return "permanent"   # a local file of the checkpoint: no retry brings it back
    return None


def classify(e: BaseException) -> str:
    """"permanent" | "unreachable" | "transient" (see the module doc), by the types of `e` and of the
    errors it wraps."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError
    from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError, S3UploadFailedError

    for cause in _causes(e):
        kind = _classify_one(cause)
        if kind is not None:
            return kind
    transient = (ChecksumError, BotoCoreError, Boto3Error, RetriesExceededError, S3UploadFailedError,
                 S3DownloadFailedError, OSError)
    return "transient" if isinstance(e, transient) else "permanent"


def is_permanent(e: BaseException) -> bool:
    return classify(e) == "permanent"


def not_found(e: BaseException) -> bool:
    """A ClientError saying the object is not there (GET: NoSuchKey, HEAD: 404)."""
    return error_code(e) in ("NoSuchKey", "404", "NotFound")


# -- deadlines --------------------------------------------------------------------------------------
CALL_BUDGET = 120.0   # seconds one request may take outside any deadline (connect + read x attempts)
DOWN_BUDGET = 4.0     # the same while this process's last retry gave up on an unreachable endpoint
_LADDER = (1, 2, 3, 5, 8, 13, 20, 30, 45, 60, 90, 120)   # timeouts in use: few clients, reused
_local = threading.local()     # .deadline: the deadline of the retry() running in this thread
_down = {"since": None}        # when a retry last gave up because the endpoint did not answer
_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def _sized_client(base, budget: float):
    """A client like `base` (its endpoint) whose one request, retries included, fits in `budget`
    seconds: connect and read timeouts of at most budget / 2 (never above base's), and as many
    attempts (never more than base's) as fit. Always one of ours, made by one factory (storage's
    `shared`), so that `s3.client.exceptions.NoSuchKey` is the class the last request raised."""
    cfg = base.meta.config
    base_read, base_connect = float(cfg.read_timeout), float(cfg.connect_timeout)
    base_attempts = int((cfg.retries or {}).get("total_max_attempts", 3))
    step = max([v for v in _LADDER if v <= budget / 2] or [1])
    read, connect = min(base_read, step), min(base_connect, step)
    attempts = max(1, min(base_attempts, int(budget // (read + connect))))
    endpoint = base.meta.endpoint_url
    endpoint = None if "amazonaws.com" in endpoint else endpoint   # AWS: boto3 resolves it
    key = (endpoint, read, connect, attempts)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = s3_client(endpoint, connect_timeout=connect, read_timeout=read,
                                               total_max_attempts=attempts, shared=True)
    return client


def _budget() -> float:
    """Seconds the next request of this thread may take (its retry's deadline, or a default)."""
    deadline = getattr(_local, "deadline", None)
    if deadline is not None:
        return max(1.0, deadline - time.time())
    return DOWN_BUDGET if _down["since"] is not None else CALL_BUDGET


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

    While `fn` runs, every S3Checkpoints request in this thread fits in the time left (see the
    module doc), so this returns or raises within about a second of `deadline`. Permanent errors
    (`classify`) are raised at once. Every failure is reported (message only: botocore errors never
    carry credentials)."""
    delay = backoff
    attempt = 0
    start = time.time()
    outer = getattr(_local, "deadline", None)
    _local.deadline = deadline if outer is None else min(outer, deadline)
    try:
        while True:
            attempt += 1
            try:
                result = fn()
                _down["since"] = None
                return result
            except Exception as e:  # noqa: BLE001 - classified: retried, or raised at once
                kind = classify(e)
                if kind == "permanent":
                    raise RuntimeError(f"{what}: {type(e).__name__}: {e}") from e
                if time.time() + delay > _local.deadline:
                    if kind == "unreachable":
                        _down["since"] = _down["since"] or time.time()
                        raise RuntimeError(f"{what}: S3 did not answer: gave up after {attempt} attempt(s) "
                                           f"in {time.time() - start:.0f} s ({type(e).__name__}: {e})") from e
                    raise RuntimeError(f"{what}: giving up after {attempt} attempts in "
                                       f"{time.time() - start:.0f} s: {type(e).__name__}: {e}") from e
                report(f"{what}: attempt {attempt} failed ({type(e).__name__}: {e}); retrying in "
                       f"{delay:.1f}s")
                time.sleep(delay * (1 + 0.1 * random.random()))
                delay = min(delay * 2, max_backoff)
    finally:
        _local.deadline = outer


class S3Checkpoints:
    """One checkpoint prefix on S3. Thread-safe for one caller thread at a time per instance."""

    def __init__(self, uri: S3Uri, multipart_threshold: int = 64 << 20, client=None):
        self.uri = uri
        self.base_client = client or s3_client()
        from boto3.s3.transfer import TransferConfig

        # Multipart above the threshold: parallel parts, and a failed part is retried alone.
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold,
                                       multipart_chunksize=max(multipart_threshold // 4, 8 << 20))

    @property
    def client(self):
        """The client for the next request: the given one, with timeouts and attempts that fit this
        thread's deadline (or the default budget of a request)."""
        return _sized_client(self.base_client, _budget())

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
        except ClientError as e:
            if not not_found(e):
                raise
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
        except ClientError as e:
            if not not_found(e):
                raise
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
        except ClientError as e:
            if not not_found(e):
                raise
            return None
        text = raw.decode("utf-8", "replace").strip()
        return text if text.startswith("step_") and text[5:].isdigit() else None

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.uri.bucket, Key=key)
            return True
        except ClientError as e:
            if not_found(e):
                return False
            raise

    def download_verified(self, files: list[dict], dest: Path, key_of: Callable[[str], str]) -> None:
        """Download each manifest entry ({path, size, sha256}) from key `key_of(path)` to dest/path and
        check it (size, then sha256). ChecksumError names the object: unreadable or deleted, truncated,
        corrupt; errors no retry mends are raised as they are."""
        for e in files:
            local = dest / e["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            key = key_of(e["path"])
            try:
                self.client.download_file(self.uri.bucket, key, str(local), Config=self.transfer)
            except ClientError as err:
                if is_permanent(err):
                    raise
                what = "deleted" if not_found(err) else str(err)
                raise ChecksumError(f"s3://{self.uri.bucket}/{key}: cannot be read ({error_code(err)}: "
                                    f"{what})") from err
            size = local.stat().st_size
            if size != e["size"]:
                raise ChecksumError(f"s3://{self.uri.bucket}/{key}: {size} bytes, manifest says {e['size']} "
                                    f"(truncated)")
            if sha256_file(local) != e["sha256"]:
                raise ChecksumError(f"s3://{self.uri.bucket}/{key}: sha256 differs from the manifest "
                                    f"(corrupt)")

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
