"""Source -> shards: list records, decode + pyramid + PNG-encode in worker processes, write in order.

    source.items(rejects) ──> duplicate-key filter ──> chunks ──> worker pool: encode_record()
                                                                      │ (ordered, bounded window)
    rejects.jsonl <── rejects ──────────────────────────────────── main process: writer per split
                                                                      └─> index.json (last)

The source is iterated in the main process and results are consumed in submission order, so the
shards are identical for any number of workers. Anything that cannot be converted is counted in
`rejects.jsonl` with its file and reason; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import re
import shutil
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path

from mixvlp_ds import stage_progress
from mixvlp_ds.labels import is_label_space
from mixvlp_ds.shard.format import (
    DEFAULT_IMAGE_SIZE,
    META_FIELDS,
    SPLITS,
    image_field,
    label_values,
    level_sizes,
)
from mixvlp_ds.shard.images import ImageDecodeError, array_to_gray8, load_image
from mixvlp_ds.shard.index import INDEX_NAME, build_index, write_index
from mixvlp_ds.shard.pyramid import encode_png, make_pyramid
from mixvlp_ds.shard.source import RejectLog, SourceItem

REJECTS_NAME = "rejects.jsonl"


class NothingWrittenError(RuntimeError):
    """The run produced no sample at all; the message says what was expected and what was rejected."""


@dataclass
class ShardOptions:
    """How to write shards. `workers`, `chunksize` and `progress` never change the output bytes."""

    image_size: int = DEFAULT_IMAGE_SIZE   # finest pyramid level S in px (levels S, S/2, S/4)
    format: str = "wds"                    # "wds" (tar) or "mds" (mosaicml streaming)
    shard_max_samples: int = 5000          # samples per shard file at most
    shard_max_bytes: int = 256 * 2**20     # bytes per shard file at most (256 MiB)
    workers: int = 1                       # decoding processes (1 = in this process)
    chunksize: int = 16                    # records per task sent to a worker
    progress: bool = False                 # a rich progress bar on the terminal
    institution: str | None = None         # written into meta.json and keys; None = the source's own
    seed: int = 0                          # recorded in index.json; sources use it for splits/draws
    source_args: dict = field(default_factory=dict)  # the source's options, recorded in index.json

    def validate(self) -> None:
        level_sizes(self.image_size)
        if self.image_size < 16:
            raise ValueError(f"image_size {self.image_size} is too small (>= 16)")
        if self.format not in ("wds", "mds"):
            raise ValueError(f"format {self.format!r}: expected 'wds' or 'mds'")
        if self.shard_max_samples < 1 or self.shard_max_bytes < 64 * 1024:
            raise ValueError("shard_max_samples must be >= 1 and shard_max_bytes >= 64 KiB")
        if self.workers < 1 or self.chunksize < 1:
            raise ValueError("workers and chunksize must be >= 1")

    def recorded(self) -> dict:
        """The options that determine the output (what index.json records as `args`)."""
        d = asdict(self)
        for k in ("workers", "chunksize", "progress"):
            d.pop(k)
        return json.loads(json.dumps(d, sort_keys=True, default=str))


# ---------------------------------------------------------------- worker side: one record -> sample

def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_record(item: SourceItem, image_size: int, label_space: str, institution: str) -> tuple:
    """SourceItem -> ("ok", split, sample) or ("reject", reason, file, key, detail).

    sample: {"__key__", "img.<S>.png", "img.<S/2>.png", "img.<S/4>.png", "txt"?, "labels.json",
    "meta.json"} with bytes values (the format contract in `mixvlp_ds.shard.format`)."""
    meta = dict(item.meta)
    file = item.image_path or meta.get("source_file")
    split = meta.get("split")
    if split not in SPLITS:
        return ("reject", "unknown_split", file, item.key, f"split {split!r}, expected one of {SPLITS}")
    try:
        labels = label_values(label_space, item.labels or {})
    except ValueError as e:
        return ("reject", "bad_labels", file, item.key, str(e))
    text = item.text if isinstance(item.text, str) and item.text.strip() else None
    sample: dict = {"__key__": item.key}
    meta.setdefault("institution", institution)
    meta.update(orig_width=None, orig_height=None, orig_bit_depth=None)
    meta.setdefault("source_sha1", None)
    if item.has_image:
        try:
            if item.image_path is not None:
                img = load_image(item.image_path, min_side=image_size)
                pixels = img.pixels
                meta.update(orig_width=img.orig_width, orig_height=img.orig_height,
                            orig_bit_depth=img.orig_bit_depth, source_sha1=img.source_sha1,
                            source_file=str(item.image_path))
            else:
                raw = item.image_fn()
                pixels = array_to_gray8(raw)
                meta.update(orig_width=int(pixels.shape[1]), orig_height=int(pixels.shape[0]),
                            orig_bit_depth=int(getattr(raw, "dtype", pixels.dtype).itemsize * 8),
                            source_sha1=hashlib.sha1(pixels.tobytes()).hexdigest())
            for size, level in zip(level_sizes(image_size), make_pyramid(pixels, image_size), strict=True):
                sample[image_field(size)] = encode_png(level)
        except ImageDecodeError as e:
            return ("reject", e.reason, e.file, item.key, e.detail)
        except Exception as e:  # a source's image_fn failing: counted, with the error, not fatal
            return ("reject", "image_failed", file, item.key, f"{type(e).__name__}: {e}")
    elif text is None:
        return ("reject", "empty_record", file, item.key, "no image and no (non-empty) report text")
    if text is not None:
        sample["txt"] = text.encode("utf-8")
    for name in META_FIELDS:
        meta.setdefault(name, None)
    sample["labels.json"] = _json_bytes({"space": label_space, "values": labels})
    sample["meta.json"] = _json_bytes(meta)
    return ("ok", split, sample)


def _run_chunk(fn: Callable, chunk: list) -> list:
    return [fn(x) for x in chunk]


def worker_pool(workers: int):
    """A process pool for workers > 1 (fork where available: cheap start, no re-import), else None.
    Created before any progress-bar thread starts."""
    from contextlib import nullcontext

    if workers <= 1:
        return nullcontext(None)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(workers)


def ordered_map(fn: Callable, items: Iterable, pool, chunksize: int, window: int = 8) -> Iterator:
    """fn over items, results in input order, with at most `window` chunks in flight.

    pool: a multiprocessing Pool, or None to run in this process. The window (not the worker
    count) decides when results are consumed relative to the source's own progress, so even
    rejects.jsonl interleaves identically whatever the number of workers (up to window / 2)."""
    it = iter(items)
    chunks = iter(lambda: list(islice(it, chunksize)), [])
    pending: deque = deque()
    for chunk in chunks:
        pending.append(chunk if pool is None else pool.apply_async(_run_chunk, (fn, chunk)))
        if len(pending) > window:
            done = pending.popleft()
            yield from _run_chunk(fn, done) if pool is None else done.get()
    while pending:
        done = pending.popleft()
        yield from _run_chunk(fn, done) if pool is None else done.get()


def _unique_keys(items: Iterable[SourceItem], rejects: RejectLog) -> Iterator[SourceItem]:
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            rejects.reject("duplicate_key", item.image_path or item.meta.get("source_file"), item.key,
                           "an earlier record has the same key; the first one is kept")
            continue
        seen.add(item.key)
        yield item


# ---------------------------------------------------------------- main side

_OUR_FILES = re.compile(r"^(train|val|test)-\d{6}\.tar$")
_MDS_FILES = re.compile(r"^(index\.json|shard\.\d{5}\.mds(\.\w+)?)$")


def clear_previous_output(out_dir: Path) -> None:
    """Remove what an earlier run wrote here (index first, so the folder stops looking complete).
    Only files named like ours are touched."""
    (out_dir / INDEX_NAME).unlink(missing_ok=True)
    (out_dir / REJECTS_NAME).unlink(missing_ok=True)
    for p in out_dir.iterdir():
        if p.is_file() and (_OUR_FILES.match(p.name) or p.name.endswith((".tar.tmp", "index.json.tmp"))):
            p.unlink()
        elif p.is_dir() and (p.name in SPLITS or re.fullmatch(r"\.(train|val|test)\.tmp", p.name)):
            if p.name.startswith(".") or all(_MDS_FILES.match(f.name) for f in p.iterdir()):
                shutil.rmtree(p)


def _make_writer(opts: ShardOptions, out_dir: Path, split: str):
    if opts.format == "wds":
        from mixvlp_ds.shard.writer_wds import WdsShardWriter

        return WdsShardWriter(out_dir, split, opts.shard_max_samples, opts.shard_max_bytes)
    from mixvlp_ds.shard.writer_mds import MdsShardWriter

    return MdsShardWriter(out_dir, split, opts.shard_max_samples, opts.shard_max_bytes,
                          level_sizes(opts.image_size))


def _progress(enabled: bool):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), transient=False)


def _show(bar, task, n: int, counts: dict, rejects: RejectLog) -> None:
    done = sum(c["samples"] for c in counts.values())
    bar.update(task, completed=n, status=f"written {done}, rejected {rejects.total}")


def write_dataset(source, out_dir: str | Path, opts: ShardOptions | None = None) -> dict:
    """Write every record of `source` as shards under `out_dir`; returns the summary dict
    {"out_dir", "format", "source", "institution", "index", "rejects_file", "splits": {split:
    {"samples", "images", "texts", "shards", "bytes"}}, "total_samples", "rejects", "rejects_total",
    "notes"}. Raises NothingWrittenError when no sample was written (no index.json then).

    Long on purpose: the stages in their order (list, encode in parallel, write under temporary
    names, index, rename), so the invariants that tie them (nothing visible until complete, the
    same bytes on a rerun) stand in one place.
    """
    opts = opts or ShardOptions()
    opts.validate()
    if not is_label_space(source.label_space):
        raise ValueError(f"source {source.name!r} has unknown label space {source.label_space!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_previous_output(out_dir)
    institution = opts.institution or getattr(source, "institution", None) or source.name
    (out_dir / REJECTS_NAME).touch()
    rejects = RejectLog(out_dir / REJECTS_NAME)
    writers: dict = {}
    counts: dict[str, Counter] = {}
    fn = partial(encode_record, image_size=opts.image_size, label_space=source.label_space,
                 institution=institution)
    total = len(source) if hasattr(source, "__len__") else None
    try:
        with worker_pool(opts.workers) as pool, _progress(opts.progress) as bar, stage_progress.part():
            task = bar.add_task(f"shard {source.name}", total=total, status="") if bar else None
            window = max(8, 2 * opts.workers)
            items = _unique_keys(source.items(rejects), rejects)
            results = ordered_map(fn, items, pool, opts.chunksize, window)
            for n, res in enumerate(results, 1):
                if res[0] == "ok":
                    _, split, sample = res
                    if split not in writers:
                        writers[split] = _make_writer(opts, out_dir, split)
                    writers[split].write(sample)
                    c = counts.setdefault(split, Counter())
                    c["samples"] += 1
                    c["images"] += image_field(opts.image_size) in sample
                    c["texts"] += "txt" in sample
                else:
                    _, reason, file, key, detail = res
                    rejects.reject(reason, file, key, detail)
                if n % 16 == 0:
                    if bar is not None:
                        _show(bar, task, n, counts, rejects)
                    known = total or getattr(source, "num", 0)   # a synthetic source: how many it draws
                    stage_progress.report(n, known, f"{source.name}: {n}/{known or '?'} records")
            if bar is not None:
                _show(bar, task, sum(c["samples"] for c in counts.values()) + rejects.total, counts, rejects)
        split_files = {}
        for split in sorted(writers):
            shards = writers[split].close()
            split_files[split] = {"shards": shards, "extra_files": writers[split].extra_files,
                                  "num_images": counts[split]["images"], "num_texts": counts[split]["texts"]}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        rejects.close()
    written = sum(c["samples"] for c in counts.values())
    if written == 0:
        by_reason = ", ".join(f"{k}: {v}" for k, v in sorted(rejects.counts.items())) or "none"
        expected = getattr(source, "expected", None) or (
            "at least one record with a readable image or a non-empty report")
        notes = ", ".join(f"{k}: {v}" for k, v in sorted(rejects.notes.items()))
        raise NothingWrittenError(
            f"nothing was written to {out_dir} from source {source.name!r}: expected {expected}. "
            f"Rejected: {by_reason}" + (f"; notes: {notes}" if notes else "")
            + f". Details in {out_dir / REJECTS_NAME}.")
    index = build_index(opts, source, institution, split_files, rejects)
    index_path = write_index(out_dir, index)
    return {
        "out_dir": str(out_dir), "format": opts.format, "source": source.name, "institution": institution,
        "index": str(index_path), "rejects_file": str(out_dir / REJECTS_NAME),
        "splits": {s: {"samples": e["num_samples"], "images": e["num_images"], "texts": e["num_texts"],
                       "shards": len(e["shards"]), "bytes": e["bytes"]} for s, e in index["splits"].items()},
        "total_samples": written, "rejects": dict(sorted(rejects.counts.items())),
        "rejects_total": rejects.total, "notes": dict(sorted(rejects.notes.items())),
    }
