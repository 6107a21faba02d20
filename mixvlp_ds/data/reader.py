"""Reading shard folders (local or s3://) into records, and decoding records into arrays.

A `Record` is one sample with its members still encoded (PNG bytes, UTF-8 text, JSON): the
mixing sampler moves records between buffers, and only the tuples that reach a batch are decoded.
Only meta.json is parsed on the way in, because the sampler needs the patient and the study.

A bad record (unparsable meta.json, bad PNG, wrong image size, bad labels.json, missing field) and
a truncated or unreadable shard are skipped with a counted warning (`FaultCounter`).
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.s3 import open_s3, read_s3_bytes
from mixvlp_ds.labels import label_names
from mixvlp_ds.shard.format import image_field, level_sizes
from mixvlp_ds.shard.images import decode_gray8_png
from mixvlp_ds.storage import is_s3


class SampleError(ValueError):
    """One record cannot be used; the message says why."""


@dataclass
class Record:
    """One sample of one shard, members still encoded."""

    key: str
    source: str          # the SourceSpec name
    institution: str
    patient_id: str
    study_id: str        # "" -> the key stands in for the study
    fields: dict[str, bytes] = field(repr=False)
    shard: str = ""

    @property
    def has_image(self) -> bool:
        return any(k.startswith("img") for k in self.fields)

    @property
    def has_text(self) -> bool:
        return "txt" in self.fields

    @property
    def study(self) -> tuple[str, str]:
        return self.institution, self.study_id or self.key


@dataclass
class ShardRef:
    """One shard of one source, as listed by index.json."""

    source: str
    url: str             # local path or s3://bucket/key
    num_samples: int


# ----------------------------------------------------------------------------- listing

def join(uri: str, rel: str) -> str:
    return f"{uri.rstrip('/')}/{rel}" if is_s3(uri) else str(Path(uri) / rel)


def read_index(uri: str, retries: int = 5, backoff: float = 0.5) -> dict:
    """index.json of a shard folder, local (validated by `mixvlp_ds.shard.index.read_index`) or S3."""
    if not is_s3(uri):
        from mixvlp_ds.shard.index import read_index as read_local

        return read_local(uri)
    raw = read_s3_bytes(join(uri, "index.json"), retries, backoff)
    try:
        index = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{join(uri, 'index.json')}: not valid JSON ({e})") from e
    if "splits" not in index:
        raise ValueError(f"{join(uri, 'index.json')}: no 'splits' (not a mixvlp_ds shard folder)")
    return index


def list_shards(uri: str, split: str, source: str, index: dict | None = None) -> list[ShardRef]:
    index = index if index is not None else read_index(uri)
    if split not in index["splits"]:
        raise ValueError(f"{join(uri, 'index.json')}: no split {split!r}; has {sorted(index['splits'])}")
    return [ShardRef(source, join(uri, s["file"]), int(s["num_samples"]))
            for s in index["splits"][split]["shards"]]


# ----------------------------------------------------------------------------- records

def record_from_fields(key: str, fields: dict[str, bytes], source: str, shard: str,
                       institution: str = "") -> Record:
    """Check the members every record needs and parse meta.json; SampleError otherwise."""
    if "meta.json" not in fields:
        raise SampleError("missing field meta.json")
    if "labels.json" not in fields:
        raise SampleError("missing field labels.json")
    try:
        meta = json.loads(fields["meta.json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError(f"bad meta.json: {e}") from e
    if not isinstance(meta, dict) or not meta.get("patient_id"):
        raise SampleError("bad meta.json: no patient_id")
    rec = Record(key, source, institution or str(meta.get("institution") or source),
                 str(meta["patient_id"]), str(meta.get("study_id") or ""), fields, shard)
    if not rec.has_image and not rec.has_text:
        raise SampleError("missing field: neither image nor txt")
    return rec


def open_shard(url: str, retries: int = 5, backoff: float = 0.5):
    return open_s3(url, retries, backoff) if is_s3(url) else open(url, "rb")  # noqa: SIM115


def _split_member(name: str) -> tuple[str, str]:
    """'inst/study/img1.img.224.png' -> ('inst/study/img1', 'img.224.png'), as WebDataset splits."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext


def iter_shard(shard: ShardRef, faults: FaultCounter, institution: str = "", retries: int = 5,
               backoff: float = 0.5, images: bool = True) -> Iterator[Record]:
    """Records of one WebDataset tar, streamed (no seek, no local copy).

    Bad records are skipped and counted; when the tar ends early or cannot be read, the records
    index.json promised but that never arrived are counted as skipped, naming the shard.
    images=False (a model that reads no image): image members are passed over unread and stand as
    empty placeholders, so the record still says it has an image (the sampler routes by that)
    while the mixing buffers hold no PNG bytes."""
    got = 0
    try:
        with open_shard(shard.url, retries, backoff) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            key, fields = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_member(member.name)
                if k != key and key is not None:
                    got += 1
                    rec = _make(key, fields, shard, faults, institution)
                    if rec is not None:
                        yield rec
                    fields = {}
                key = k
                fields[ext] = tar.extractfile(member).read() if images or not ext.startswith("img") else b""
            if key is not None:
                got += 1
                rec = _make(key, fields, shard, faults, institution)
                if rec is not None:
                    yield rec
    except (tarfile.TarError, OSError, EOFError) as e:
        lost = max(shard.num_samples - got, 1)
        faults.skip(shard.url, "", f"unreadable shard: {type(e).__name__}: {e} "
                                   f"(read {got} of {shard.num_samples} records)", n=lost)
        return
    if got < shard.num_samples:
        faults.skip(shard.url, "", f"truncated shard: {got} of {shard.num_samples} records",
                    n=shard.num_samples - got)


def _make(key, fields, shard: ShardRef, faults: FaultCounter, institution: str) -> Record | None:
    try:
        rec = record_from_fields(key, fields, shard.source, shard.url, institution)
    except SampleError as e:
        faults.skip(shard.url, key, str(e))
        return None
    faults.ok()
    return rec


# ----------------------------------------------------------------------------- decoding

def decode_png(data: bytes, size: int, name: str) -> np.ndarray:
    """8-bit grayscale PNG -> uint8 (size, size); SampleError when it is not one.

    The shard writer's PNGs take OpenCV's decoder (~4x faster than Pillow at 224 px, the same
    pixels); anything else (another mode, a wrong size, a damaged file) goes through Pillow,
    which converts it or names the problem."""
    fast = decode_gray8_png(data, size, size)
    if fast is not None:
        return fast
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "L":
                im = im.convert("L")
            arr = np.asarray(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise SampleError(f"bad PNG {name}: {type(e).__name__}: {e}") from e
    if arr.shape != (size, size):
        raise SampleError(f"{name} is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size}")
    return arr


def decode_pyramid(rec: Record, image_size: int) -> list[np.ndarray]:
    """The three levels, finest first: [(S, S), (S/2, S/2), (S/4, S/4)] uint8."""
    levels = []
    for s in level_sizes(image_size):
        name = image_field(s)
        if name not in rec.fields:
            raise SampleError(f"missing field {name}")
        levels.append(decode_png(rec.fields[name], s, name))
    return levels


def decode_text(rec: Record) -> str:
    try:
        return rec.fields["txt"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise SampleError(f"bad txt: {e}") from e


def decode_labels(rec: Record, space: str) -> np.ndarray:
    """labels.json -> float32 (K,) in `space`: 1/0/-1, NaN for null or not in the record's space.

    Findings of another space are matched by name (e.g. CheXpert's 'Atelectasis' in CXR14)."""
    names = label_names(space)
    out = np.full(len(names), np.nan, dtype=np.float32)
    try:
        obj = json.loads(rec.fields["labels.json"])
        values = obj["values"]
        if not isinstance(values, dict):
            raise TypeError("values is not a mapping")
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SampleError(f"bad labels.json: {e}") from e
    for i, n in enumerate(names):
        v = values.get(n)
        if v is not None:
            if v not in (1, 0, -1):
                raise SampleError(f"bad labels.json: {n}={v!r}")
            out[i] = float(v)
    return out


def decode_record(rec: Record, image_size: int, label_space: str) -> dict:
    """A record -> a decoded sample dict (the unit `collate` and `iter_samples` use)."""
    meta = json.loads(rec.fields["meta.json"])
    return {
        "key": rec.key, "institution": rec.institution, "patient_id": rec.patient_id,
        "study_id": rec.study_id, "meta": meta,
        "pyramid": decode_pyramid(rec, image_size) if rec.has_image else None,
        "text": decode_text(rec) if rec.has_text else None,
        "labels": decode_labels(rec, label_space),
    }


def iter_samples(uri: str, split: str, image_size: int | None = None, label_space: str | None = None,
                 max_skip_fraction: float = 0.01, faults: FaultCounter | None = None) -> Iterator[dict]:
    """Every decoded sample of one split of one shard folder, in shard order (fine-tuning, eval).

    image_size / label_space default to the folder's own (index.json). Bad records are skipped
    and counted; more than `max_skip_fraction` of them raises DataFaultError."""
    index = read_index(uri)
    image_size = image_size or int(index["image_size"])
    label_space = label_space or index.get("label_space", "none")
    faults = faults or FaultCounter(max_skip_fraction)
    for shard in list_shards(uri, split, index.get("source", "shards"), index):
        for rec in iter_shard(shard, faults):
            try:
                yield decode_record(rec, image_size, label_space)
            except SampleError as e:
                faults.skip(shard.url, rec.key, str(e), already_seen=True)
    faults.check()
