"""Reading shards from S3 as streams, with retries that resume where the stream broke.

No shard is copied to local disk: a tar is read front to back from one GET. When a read fails
(connection reset, server restart, timeout), the reader waits (exponential backoff) and issues a
ranged GET from the first byte not yet delivered, so the tar parser above never sees the fault;
only after `retries` failed attempts in a row does the error surface and the shard count as
failed. Endpoint, region and credentials come from `mixvlp_ds.storage.s3_client`.
"""

from __future__ import annotations

import io
import logging
import time

from mixvlp_ds.storage import endpoint_url, parse_s3_uri, s3_client

log = logging.getLogger(__name__)

_CLIENTS: dict[tuple, object] = {}  # (pid, endpoint) -> client: clients are not fork-safe


def client():
    import os

    # one per process and endpoint; from the process's shared boto3 session, which a loader worker
    # inherits warm from its parent (a new session per worker cost 0.11-0.25 CPU-s at its start,
    # 0.016 s shared: benchmarks/data_bench.py, real NIH from S3, first epoch 617 -> 776 samples/CPU-s)
    key = (os.getpid(), endpoint_url())
    if key not in _CLIENTS:
        _CLIENTS.clear()
        _CLIENTS[key] = s3_client(max_attempts=2, connect_timeout=3.0, read_timeout=20.0, shared=True)
    return _CLIENTS[key]


class S3ReadError(OSError):
    """An S3 object could not be read after all retries; the message names the object."""


class S3RangeReader(io.RawIOBase):
    """A forward-only file object over one S3 object that re-opens at its position on errors."""

    def __init__(self, uri: str, retries: int = 5, backoff: float = 0.5):
        self.uri = uri
        self.loc = parse_s3_uri(uri)
        self.retries, self.backoff = max(1, retries), backoff
        self.pos = 0
        self.size: int | None = None
        self.body = None
        self.retried = 0  # attempts that failed and were retried (for logs and tests)

    def readable(self) -> bool:
        return True

    def _open(self) -> None:
        kw = {"Bucket": self.loc.bucket, "Key": self.loc.prefix}
        if self.pos:
            kw["Range"] = f"bytes={self.pos}-"
        resp = client().get_object(**kw)
        if self.size is None:
            self.size = self.pos + int(resp["ContentLength"])
        self.body = resp["Body"]

    def readinto(self, buf) -> int:
        if self.size is not None and self.pos >= self.size:
            return 0
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                if self.body is None:
                    self._open()
                data = self.body.read(len(buf))
                if not data and self.size is not None and self.pos < self.size:
                    raise OSError(f"stream ended at byte {self.pos} of {self.size}")
                buf[: len(data)] = data
                self.pos += len(data)
                return len(data)
            except Exception as e:  # botocore and urllib3 raise many kinds; all mean "try again"
                self._close_body()  # a missing object is retried too: a restarting server lacks it briefly
                if attempt == self.retries:
                    raise S3ReadError(f"{self.uri}: read failed at byte {self.pos} after "
                                      f"{self.retries} attempts: {e}") from e
                self.retried += 1
                log.warning("S3 read of %s failed at byte %d (%s); retry %d/%d in %.1fs",
                            self.uri, self.pos, e, attempt, self.retries - 1, delay)
                time.sleep(delay)
                delay *= 2
        return 0

    def _close_body(self) -> None:
        if self.body is not None:
            try:
                self.body.close()
            except Exception:
                pass
        self.body = None

    def close(self) -> None:
        self._close_body()
        super().close()


def open_s3(uri: str, retries: int = 5, backoff: float = 0.5, bufsize: int = 1 << 20) -> io.BufferedReader:
    """A buffered, retrying stream over s3://bucket/key."""
    return io.BufferedReader(S3RangeReader(uri, retries, backoff), buffer_size=bufsize)


def read_s3_bytes(uri: str, retries: int = 5, backoff: float = 0.5) -> bytes:
    """A whole (small) object, e.g. index.json."""
    with open_s3(uri, retries, backoff) as f:
        return f.read()


def register_gopen(retries: int = 5, backoff: float = 0.5) -> None:
    """Let `webdataset.gopen("s3://...")` (and so `wds.WebDataset`) use the retrying reader."""
    import webdataset

    def gopen_s3(url, mode="rb", bufsize=1 << 20, **kw):
        if "r" not in mode:
            raise ValueError(f"s3 gopen is read-only, got mode {mode!r}")
        return open_s3(url, retries, backoff, bufsize)

    webdataset.gopen_schemes["s3"] = gopen_s3
