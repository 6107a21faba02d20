"""MDS (mosaicml streaming) shards: one sub-folder per split, as `MDSWriter` and `Stream` expect.

    <out>/<split>/index.json          streaming's own index (version 2)
    <out>/<split>/shard.00000.mds     ...

Columns (every row has all of them; MDS has no optional columns):

    key str | img_<S> bytes | img_<S/2> bytes | img_<S/4> bytes | has_image int |
    txt str | has_text int | labels json | meta json

A text-only record has empty image bytes and has_image 0; an image-only record has txt "" and
has_text 0. Image bytes are the same PNGs as in the WebDataset format, labels/meta the same dicts.

Atomicity: a split is written into `<out>/.<split>.tmp/` and the folder is renamed to
`<out>/<split>/` after `MDSWriter.finish()` wrote its index; `abort()` deletes the temp folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from mixvlp_ds.shard.format import image_field
from mixvlp_ds.shard.index import ShardInfo, file_info
from mixvlp_ds.streaming_compat import import_streaming


def mds_columns(level_sizes) -> dict[str, str]:
    cols = {"key": "str"}
    cols.update({f"img_{s}": "bytes" for s in level_sizes})
    cols.update({"has_image": "int", "txt": "str", "has_text": "int", "labels": "json", "meta": "json"})
    return cols


def sample_to_row(sample: dict, level_sizes) -> dict:
    """The WebDataset-style sample dict -> one MDS row."""
    has_image = image_field(level_sizes[0]) in sample
    row = {"key": sample["__key__"], "has_image": int(has_image), "has_text": int("txt" in sample)}
    for s in level_sizes:
        row[f"img_{s}"] = sample.get(image_field(s), b"")
    row["txt"] = sample["txt"].decode("utf-8") if "txt" in sample else ""
    row["labels"] = json.loads(sample["labels.json"])
    row["meta"] = json.loads(sample["meta.json"])
    return row


class MdsShardWriter:
    """Writes one split into `<out_dir>/<split>/` with size- and sample-limited MDS shards."""

    def __init__(self, out_dir: str | Path, split: str, max_samples: int, max_bytes: int, level_sizes):
        streaming = import_streaming()
        self.out_dir, self.split, self.level_sizes = Path(out_dir), split, tuple(level_sizes)
        self.max_samples = max_samples
        self._tmp = self.out_dir / f".{split}.tmp"
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._writer = streaming.MDSWriter(
            out=str(self._tmp), columns=mds_columns(self.level_sizes), compression=None,
            hashes=None, size_limit=min(int(max_bytes), (1 << 32) - 1), progress_bar=False, max_workers=1,
        )
        self._in_shard = 0
        self.extra_files: list[ShardInfo] = []

    def write(self, sample: dict) -> None:
        if self._in_shard >= self.max_samples:
            # MDSWriter limits shards by bytes only; close the shard by sample count the same way
            # MDSWriter.write does when the byte limit is reached.
            self._writer.flush_shard()
            self._writer._reset_cache()
            self._in_shard = 0
        before = len(self._writer.shards)
        self._writer.write(sample_to_row(sample, self.level_sizes))
        if len(self._writer.shards) > before:  # the byte limit flushed a shard before this sample
            self._in_shard = 0
        self._in_shard += 1

    def close(self) -> list[ShardInfo]:
        """Finish and rename the split folder into place; returns the shards in order
        (`extra_files` then holds the split's own MDS index.json)."""
        w = self._writer
        if w.new_samples:  # flush the last shard ourselves and let its (local no-op) upload task
            w.flush_shard()  # drain: MDSWriter.finish() sleeps a whole second if the queue is not empty
            w._reset_cache()
        while w.executor._work_queue.qsize() > 0:
            time.sleep(0.002)
        w.finish()
        final = self.out_dir / self.split
        if final.exists():
            shutil.rmtree(final)
        os.replace(self._tmp, final)
        meta = json.loads((final / "index.json").read_text())
        shards = [file_info(self.out_dir, f"{self.split}/{s['raw_data']['basename']}", int(s["samples"]))
                  for s in meta["shards"]]
        self.extra_files = [file_info(self.out_dir, f"{self.split}/index.json")]
        return shards

    def abort(self) -> None:
        try:
            self._writer.cancel_future_jobs()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
