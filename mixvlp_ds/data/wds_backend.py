"""`data.backend: wds` (the default): WebDataset tar shards listed by index.json, local or S3.

Each shard is streamed once per epoch by the one slot it was dealt to (`records.ShardRecords`),
with `reader.iter_shard`: no seek, no local copy.
"""

from __future__ import annotations

from collections.abc import Iterator

from mixvlp_ds.data.config import DataConfig, SourceSpec
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.reader import Record, ShardRef, iter_shard, list_shards, read_index
from mixvlp_ds.data.records import ShardRecords


class WdsRecords(ShardRecords):
    """Record streams for the loader's slots, from every source's tar shards."""

    FORMAT = "wds"

    def __init__(self, cfg: DataConfig, specs: list[SourceSpec], n_slots: int, seed: int,
                 image_size: int | None):
        super().__init__(cfg, specs, n_slots, seed, image_size)
        for s in specs:
            index = read_index(s.uri, cfg.s3_retries, cfg.s3_backoff)
            self.check_index(s, index)
            self.shards[s.name] = list_shards(s.uri, s.split, s.name, index)
        self.warn_if_short()

    def shard_records(self, ref: ShardRef, faults: FaultCounter) -> Iterator[Record]:
        yield from iter_shard(ref, faults, self.institution[ref.source], self.cfg.s3_retries,
                              self.cfg.s3_backoff, images=self.image_size is not None)
