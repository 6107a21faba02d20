"""`index.json`: what a shard folder holds, written last and atomically, read back with validation.

Schema (version `format.SCHEMA_VERSION`; docs/shard_format.md has the full description):

    {"schema_version": 1, "format": "wds" | "mds", "source": "nih", "institution": "nih",
     "label_space": "cxr14", "label_names": [...], "image_size": 224, "level_sizes": [224, 112, 56],
     "splits": {"train": {"num_samples", "num_images", "num_texts", "bytes",
                          "shards": [{"file", "num_samples", "bytes", "sha256"}, ...],
                          "extra_files": [{"file", "num_samples": 0, "bytes", "sha256"}]}},   # MDS index
     "totals": {"num_samples", "num_images", "num_texts", "num_shards", "bytes"},
     "args": {... creation options, no timestamps ...},
     "rejects": {"total": n, "by_reason": {...}}, "notes": {...}}

No timestamps or host names: the same command gives a byte-identical index.json.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from mixvlp_ds.labels import label_names
from mixvlp_ds.shard.format import SCHEMA_VERSION, level_sizes
from mixvlp_ds.shard.source import RejectLog

INDEX_NAME = "index.json"
FORMATS = ("wds", "mds")


class ShardIndexError(ValueError):
    """index.json is missing, unreadable or inconsistent with the folder; the message names the file."""


@dataclass
class ShardInfo:
    """One file of a split: path relative to the output folder, samples, size, sha256 hex."""

    file: str
    num_samples: int
    bytes: int
    sha256: str


def file_info(out_dir: Path, rel: str, num_samples: int = 0) -> ShardInfo:
    """ShardInfo of an existing file (reads it once for the sha256)."""
    h = hashlib.sha256()
    path = Path(out_dir) / rel
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return ShardInfo(rel, num_samples, path.stat().st_size, h.hexdigest())


def dumps(obj) -> str:
    """Canonical JSON used for index.json (sorted keys, fixed separators, trailing newline)."""
    return json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to `<path>.tmp`, fsync, rename: readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def build_index(opts, source, institution: str, splits: dict, rejects: RejectLog) -> dict:
    """The index of a finished folder. opts: the run's ShardOptions (format, image size, the options
    recorded as `args`); source: its name and label space; rejects: the run's counts and notes;
    splits: {split: {"shards": [ShardInfo], "extra_files": [ShardInfo], "num_images", "num_texts"}}."""
    out_splits, totals = {}, {"num_samples": 0, "num_images": 0, "num_texts": 0, "num_shards": 0, "bytes": 0}
    for split in sorted(splits):
        s = splits[split]
        shards = [asdict(x) for x in s["shards"]]
        extra = [asdict(x) for x in s.get("extra_files", [])]
        entry = {
            "num_samples": sum(x["num_samples"] for x in shards),
            "num_images": int(s.get("num_images", 0)),
            "num_texts": int(s.get("num_texts", 0)),
            "bytes": sum(x["bytes"] for x in shards + extra),
            "shards": shards,
            "extra_files": extra,
        }
        out_splits[split] = entry
        for k in ("num_samples", "num_images", "num_texts", "bytes"):
            totals[k] += entry[k]
        totals["num_shards"] += len(shards)
    return {
        "schema_version": SCHEMA_VERSION,
        "format": opts.format,
        "source": source.name,
        "institution": institution,
        "label_space": source.label_space,
        "label_names": list(label_names(source.label_space)),
        "image_size": int(opts.image_size),
        "level_sizes": [int(x) for x in level_sizes(opts.image_size)],
        "splits": out_splits,
        "totals": totals,
        "args": opts.recorded(),
        "rejects": {"total": int(rejects.total), "by_reason": dict(sorted(rejects.counts.items()))},
        "notes": dict(sorted(rejects.notes.items())),
    }


def write_index(out_dir: str | Path, index: dict) -> Path:
    path = Path(out_dir) / INDEX_NAME
    atomic_write_text(path, dumps(index))
    return path


_REQUIRED = ("schema_version", "format", "source", "label_space", "label_names", "image_size",
             "level_sizes", "splits", "totals")


def read_index(out_dir: str | Path, verify_sha256: bool = False) -> dict:
    """Load and validate `<out_dir>/index.json`: required keys, schema version, format, and every
    listed file present with the recorded size (and sha256 when `verify_sha256`)."""
    out_dir = Path(out_dir)
    path = out_dir / INDEX_NAME
    if not path.is_file():
        raise ShardIndexError(f"{path}: not found; a shard folder is complete only once index.json is "
                              "written (was the shard run interrupted?)")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardIndexError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(index, dict):
        raise ShardIndexError(f"{path}: expected a JSON object, got {type(index).__name__}")
    missing = [k for k in _REQUIRED if k not in index]
    if missing:
        raise ShardIndexError(f"{path}: missing keys {missing}")
    if index["schema_version"] != SCHEMA_VERSION:
        raise ShardIndexError(f"{path}: schema_version {index['schema_version']!r}, this code reads "
                              f"{SCHEMA_VERSION}; re-shard with this version")
    if index["format"] not in FORMATS:
        raise ShardIndexError(f"{path}: format {index['format']!r} is not one of {FORMATS}")
    for split, entry in index["splits"].items():
        for rec in entry.get("shards", []) + entry.get("extra_files", []):
            f = out_dir / rec["file"]
            if not f.is_file():
                raise ShardIndexError(f"{path}: split {split!r} lists {rec['file']}, which is missing")
            if f.stat().st_size != rec["bytes"]:
                raise ShardIndexError(f"{path}: {rec['file']} has {f.stat().st_size} bytes, "
                                      f"index says {rec['bytes']} (file changed or truncated)")
            if verify_sha256 and file_info(out_dir, rec["file"]).sha256 != rec["sha256"]:
                raise ShardIndexError(f"{path}: sha256 of {rec['file']} does not match the index")
    return index


def shard_paths(out_dir: str | Path, split: str, index: dict | None = None) -> list[Path]:
    """Absolute paths of one split's shard files (tar for wds, .mds for mds), in order."""
    index = index if index is not None else read_index(out_dir)
    if split not in index["splits"]:
        raise ShardIndexError(f"{Path(out_dir) / INDEX_NAME}: no split {split!r}; "
                              f"has {sorted(index['splits'])}")
    return [Path(out_dir) / rec["file"] for rec in index["splits"][split]["shards"]]
