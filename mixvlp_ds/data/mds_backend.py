"""`data.backend: streaming`: MDS shards (mosaicml streaming) read through `StreamingDataset`.

One `Stream` per source (local folder, or an s3:// remote cached under `data.cache_dir`), all in
one `StreamingDataset`, which downloads, caches and decodes MDS shards. The work split and the
mixing are the WebDataset backend's (`records.ShardRecords`): shards (as StreamingDataset numbers
them) are dealt to rank x worker slots by `dealing.deal_shards`, each slot reads its shards' rows
in order with `get_item`, and the same sampler, collate and resume logic follow. Why not
StreamingDataset's own partition and `StreamingDataLoader` state: it says "sample N of the raw stream",
but the batches also depend on the sampler's buffers (image pool, report pools, shuffle buffer),
so it cannot reproduce the uninterrupted batches; replaying a slot from the epoch start can, and
gives both backends one resume contract. Source weights are applied by the dealer (repeat), not
by `Stream(proportion=...)`, for the same reason.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mixvlp_ds.data.config import DataConfig, SourceSpec
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.reader import Record, SampleError, ShardRef, read_index, record_from_fields
from mixvlp_ds.data.records import ShardRecords
from mixvlp_ds.shard.format import image_field
from mixvlp_ds.storage import is_s3
from mixvlp_ds.streaming_compat import import_streaming


def row_to_fields(row: dict, images: bool = True) -> dict[str, bytes]:
    """An MDS row (mixvlp_ds.shard.writer_mds columns) -> the WebDataset member dict. images=False:
    image members stand as empty placeholders (the record still says it has an image)."""
    fields: dict[str, bytes] = {"meta.json": json.dumps(row["meta"]).encode(),
                                "labels.json": json.dumps(row["labels"]).encode()}
    if row.get("has_image"):
        for col, value in row.items():
            if col.startswith("img_"):
                fields[image_field(int(col[4:]))] = value if images else b""
    if row.get("has_text"):
        fields["txt"] = row["txt"].encode("utf-8")
    return fields


class MdsRecords(ShardRecords):
    """Record streams for the loader's slots, from one StreamingDataset over every source."""

    FORMAT = "mds"
    FORMAT_HINT = " (python -m mixvlp_ds.shard --format mds)"

    def __init__(self, cfg: DataConfig, specs: list[SourceSpec], n_slots: int, seed: int,
                 image_size: int | None):
        super().__init__(cfg, specs, n_slots, seed, image_size)
        streaming = import_streaming()
        streams = []
        for s in specs:
            index = read_index(s.uri, cfg.s3_retries, cfg.s3_backoff)
            self.check_index(s, index)
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
        self.shards = {s.name: [] for s in specs}
        self.first_sample: dict[str, int] = {}
        for shard_id, stream_id in enumerate(self.dataset.stream_per_shard):
            name = specs[int(stream_id)].name
            url = f"{specs[int(stream_id)].uri}#mds-shard-{shard_id}"
            self.shards[name].append(ShardRef(name, url, int(self.dataset.samples_per_shard[shard_id])))
            self.first_sample[url] = int(offsets[shard_id])
        self.warn_if_short()

    def shard_records(self, ref: ShardRef, faults: FaultCounter) -> Iterator[Record]:
        first = self.first_sample[ref.url]
        images = self.image_size is not None
        for i in range(ref.num_samples):
            try:
                row = self.dataset.get_item(first + i)
            except Exception as e:  # missing/corrupt shard file, download failure
                faults.skip(ref.url, "", f"unreadable shard: {type(e).__name__}: {e}", n=ref.num_samples - i)
                return
            try:
                rec = record_from_fields(row["key"], row_to_fields(row, images), ref.source, ref.url,
                                         self.institution[ref.source])
            except (SampleError, KeyError, TypeError) as e:
                faults.skip(ref.url, str(row.get("key", i)), f"bad row: {e}")
                continue
            faults.ok()
            yield rec
