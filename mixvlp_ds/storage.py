"""One place that makes S3 clients and parses `s3://bucket/prefix` URIs.

Credentials and region come from boto3's standard chain only (environment, config files,
instance roles); they are never logged. A non-AWS server (MinIO, moto, Ceph) is reached through
`AWS_ENDPOINT_URL` / `S3_ENDPOINT_URL` or an explicit `endpoint_url`. Retries use botocore's
"standard" mode (exponential backoff with jitter) so transient errors never surface as failures.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    prefix: str  # no leading or trailing '/'

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p and p.strip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def parse_s3_uri(uri: str) -> S3Uri:
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r}")
    return S3Uri(bucket, prefix.strip("/"))


def endpoint_url(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None


_shared: dict = {"factory": None, "lock": threading.Lock()}
# a process forked while another thread (an uploader) held the lock would wait on it forever
os.register_at_fork(after_in_child=lambda: _shared.update(lock=threading.Lock()))


def s3_client(endpoint: str | None = None, max_attempts: int = 8, connect_timeout: float = 5.0,
              read_timeout: float = 30.0, total_max_attempts: int | None = None, shared: bool = False):
    """A boto3 S3 client with standard retries. Make one per process/thread (boto3 clients are
    thread-safe, but not fork-safe: worker processes must create their own).

    total_max_attempts: attempts including the first (instead of max_attempts retries). shared: made
    by one factory for the whole process (faster, and every such client raises the same
    `client.exceptions.NoSuchKey` class); boto3's factory itself is not thread-safe, hence the lock."""
    import boto3
    from botocore.config import Config

    retries = ({"total_max_attempts": total_max_attempts} if total_max_attempts is not None
               else {"max_attempts": max_attempts})
    cfg = Config(retries={**retries, "mode": "standard"},
                 connect_timeout=connect_timeout, read_timeout=read_timeout,
                 s3={"addressing_style": "path"})
    with _shared["lock"]:
        factory = _shared["factory"] if shared else None
        if factory is None:
            factory = boto3.session.Session()
            if shared:
                _shared["factory"] = factory
        return factory.client("s3", endpoint_url=endpoint_url(endpoint), config=cfg)
