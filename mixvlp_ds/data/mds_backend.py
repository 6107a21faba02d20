"""`data.backend: streaming`: MDS shards (mosaicml streaming) read through `StreamingDataset`.

One `Stream` per source (local folder, or an s3:// remote cached under `data.cache_dir`), all in
one `StreamingDataset`, which downloads, caches and decodes MDS shards. The work split and the
mixing are the WebDataset backend's: shards (as StreamingDataset numbers them) are dealt to
rank x worker slots by `dealing.deal_shards`, each slot reads its shards' rows in order with
`get_item`, and the same sampler, collate and resume logic follow. Why not StreamingDataset's
own partition and `StreamingDataLoader` state: that state says "sample N of the raw stream",
but the batches also depend on the sampler's buffers (image pool, report pools, shuffle buffer),
so it cannot reproduce the uninterrupted batches; replaying a slot from the epoch start can, and
gives both backends one resume contract. Source weights are applied by the dealer (repeat), not
by `Stream(proportion=...)`, for the same reason.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mixvlp_ds.data.dealing import deal_shards, interleave
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.reader import Record, SampleError, ShardRef, read_index, record_from_fields
from mixvlp_ds.shard.format import image_field
from mixvlp_ds.storage import is_s3
from mixvlp_ds.streaming_compat import import_streaming

log = logging.getLogger("mixvlp_ds.data")


def row_to_fields(row: dict) -> dict[str, bytes]:
    """An MDS row (mixvlp_ds.shard.writer_mds columns) -> the WebDataset member dict."""
    fields: dict[str, bytes] = {"meta.json": json.dumps(row["meta"]).encode(),
                                "labels.json": json.dumps(row["labels"]).encode()}
    if row.get("has_image"):
        for col, value in row.items():
            if col.startswith("img_"):
                fields[image_field(int(col[4:]))] = value
    if row.get("has_text"):
        fields["txt"] = row["txt"].encode("utf-8")
    return fields


class MdsRecords:
    """Record streams for the loader's slots, from one StreamingDataset over every source."""

    def __init__(self, cfg, specs, n_slots: int, seed: int):
        streaming = import_streaming()
        self.cfg, self.seed, self.n_slots = cfg, seed, n_slots
        self.institution = {s.name: s.institution for s in specs}
        self.weights = {s.name: s.weight for s in specs}
        streams = []
        for s in specs:
            index = read_index(s.uri, cfg.s3_retries, cfg.s3_backoff)
            if index.get("format") != "mds":
                raise ValueError(f"{s.uri}: format {index.get('format')!r}; data.backend streaming reads "
                                 f"'mds' shards (python -m mixvlp_ds.shard --format mds)")
            if int(index["image_size"]) != cfg.image_size:
                raise ValueError(f"{s.uri}: shards have image_size {index['image_size']}, "
                                 f"the model's (data.image_size) is {cfg.image_size}")
            if is_s3(s.uri):
                cache = Path(cfg.cache_dir or os.path.expanduser("~/.cache/mixvlp_ds/mds")) / s.name / s.split
                streams.append(streaming.Stream(remote=f"{s.uri.rstrip('/')}/{s.split}", local=str(cache)))
            else:
                streams.append(streaming.Stream(local=str(Path(s.uri) / s.split)))
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        self.dataset = streaming.StreamingDataset(streams=streams, shuffle=False, batch_size=cfg.batch_size,
                                                  replication=None)
        offsets = np.concatenate([[0], np.cumsum(self.dataset.samples_per_shard)])
        self.shards: dict[str, list[ShardRef]] = {s.name: [] for s in specs}
        self.first_sample: dict[str, int] = {}
        for shard_id, stream_id in enumerate(self.dataset.stream_per_shard):
            name = specs[int(stream_id)].name
            url = f"{specs[int(stream_id)].uri}#mds-shard-{shard_id}"
            self.shards[name].append(ShardRef(name, url, int(self.dataset.samples_per_shard[shard_id])))
            self.first_sample[url] = int(offsets[shard_id])
        self._dealt: tuple[tuple[int, int], list[list[ShardRef]]] | None = None

    def slots(self, epoch: int, n_slots: int) -> list[list[ShardRef]]:
        """This epoch's shards per slot of a dealing into n_slots (dealt once per epoch and process)."""
        if self._dealt is None or self._dealt[0] != (epoch, n_slots):
            dealt = deal_shards(self.shards, self.weights, epoch, self.seed, n_slots)
            self._dealt = ((epoch, n_slots), dealt)
        return self._dealt[1]

    def records_fn(self, epoch: int, slot: int, n_slots: int):
        refs = self.slots(epoch, n_slots)[slot]

        def records(faults: FaultCounter, rng: np.random.Generator) -> Iterator[Record]:
            streams = {}
            for name in sorted({r.source for r in refs}):
                mine = [r for r in refs if r.source == name]
                streams[name] = (sum(r.num_samples for r in mine),
                                 (rec for ref in mine for rec in self._shard_records(ref, faults)))
            return interleave(streams, rng)

        return records

    def _shard_records(self, ref: ShardRef, faults: FaultCounter) -> Iterator[Record]:
        first = self.first_sample[ref.url]
        for i in range(ref.num_samples):
            try:
                row = self.dataset.get_item(first + i)
            except Exception as e:  # missing/corrupt shard file, download failure
                faults.skip(ref.url, "", f"unreadable shard: {type(e).__name__}: {e}", n=ref.num_samples - i)
                return
            try:
                rec = record_from_fields(row["key"], row_to_fields(row), ref.source, ref.url,
                                         self.institution[ref.source])
            except (SampleError, KeyError, TypeError) as e:
                faults.skip(ref.url, str(row.get("key", i)), f"bad row: {e}")
                continue
            faults.ok()
            yield rec
