"""WebDataset tar shards, one split at a time: `<split>-000000.tar`, `<split>-000001.tar`, ...

A sample is a dict `{"__key__": str, "<field>": bytes, ...}` (fields per `mixvlp_ds.shard.format`).
Each field is one tar member `<key>.<field>`, written in sorted field order.

Determinism: members carry mtime 0, uid/gid 0, empty user/group names and mode 0444, so a shard's
bytes depend only on the samples (webdataset's TarWriter stamps `time.time()`, hence plain
`tarfile`). Atomicity: a shard is written as `<name>.tar.tmp`, fsynced and renamed to
`<name>.tar` only when complete; `abort()` deletes the partial file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

from mixvlp_ds.shard.index import ShardInfo

TAR_BLOCK = 512


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


class _HashingFile(io.RawIOBase):
    """A write-only file that keeps a running sha256 and byte count of what passes through."""

    def __init__(self, path: Path):
        self._fh = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self._fh.write(b)
        self.sha256.update(b)
        self.nbytes += len(b)
        return len(b)

    def tell(self) -> int:
        return self.nbytes

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
        super().close()


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def sample_tar_bytes(sample: dict) -> int:
    """Upper estimate of a sample's size in a tar (headers + 512-byte padded payloads)."""
    n = 0
    for field, value in sample.items():
        if field != "__key__":
            name_extra = TAR_BLOCK * 3 if len(sample["__key__"]) + len(field) > 99 else 0  # pax header
            n += TAR_BLOCK + name_extra + -(-len(value) // TAR_BLOCK) * TAR_BLOCK
    return n


class WdsShardWriter:
    """Writes one split's samples into size-limited tar shards under `out_dir`.

    max_samples / max_bytes: a shard is closed before a sample that would exceed either limit
    (a single sample larger than max_bytes still gets its own shard)."""

    def __init__(self, out_dir: str | Path, split: str, max_samples: int, max_bytes: int):
        self.out_dir, self.split = Path(out_dir), split
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.shards: list[ShardInfo] = []
        self.extra_files: list[ShardInfo] = []  # none for tar shards (MDS has a per-split index)
        self._tar: tarfile.TarFile | None = None
        self._file: _HashingFile | None = None
        self._count = 0

    def _open(self) -> None:
        self._name = shard_name(self.split, len(self.shards))
        self._tmp = self.out_dir / (self._name + ".tmp")
        self._file = _HashingFile(self._tmp)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._count = 0

    def _finish_shard(self) -> None:
        self._tar.close()  # writes the end-of-archive blocks through _file
        self._file.close()
        os.replace(self._tmp, self.out_dir / self._name)
        digest = self._file.sha256.hexdigest()
        self.shards.append(ShardInfo(self._name, self._count, self._file.nbytes, digest))
        self._tar = self._file = None

    def write(self, sample: dict) -> None:
        """sample: {"__key__": str, field: bytes}; fields are written in sorted order."""
        key = sample["__key__"]
        if self._tar is not None and (
            self._count >= self.max_samples
            or self._file.nbytes + sample_tar_bytes(sample) + tarfile.RECORDSIZE > self.max_bytes
        ):
            self._finish_shard()
        if self._tar is None:
            self._open()
        for field in sorted(f for f in sample if f != "__key__"):
            data = sample[field]
            self._tar.addfile(_member(f"{key}.{field}", len(data)), io.BytesIO(data))
        self._count += 1

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; returns every shard of this split in order."""
        if self._tar is not None:
            self._finish_shard()
        return self.shards

    def abort(self) -> None:
        """Drop the shard in progress (its .tmp file); completed shards stay."""
        if self._tar is not None:
            try:
                self._file.close()
            finally:
                self._tmp.unlink(missing_ok=True)
                self._tar = self._file = None
