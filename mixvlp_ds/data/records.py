"""What the two shard backends share: record streams for the pre-training loader's slots.

A backend (`wds_backend.WdsRecords`: WebDataset tars; `mds_backend.MdsRecords`: MDS shards) lists
every source's shards as `ShardRef`s and reads one shard's records; this base does the rest, the
same for both: the sources' index check (format, and the shards' image size against the model's),
the dealing of an epoch's shards to rank x worker slots (`dealing.deal_shards`, once per epoch and
process), and a slot's record stream, its sources interleaved (`dealing.interleave`).

    backend = WdsRecords(cfg, specs, n_slots, seed, image_size)
    records = backend.records_fn(epoch, slot, n_slots)    # (faults, rng) -> Iterator[Record]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from mixvlp_ds.data.config import DataConfig, SourceSpec
from mixvlp_ds.data.dealing import deal_shards, interleave
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.reader import Record, ShardRef

log = logging.getLogger("mixvlp_ds.data")


class ShardRecords:
    """Record streams for the loader's slots. A subclass sets FORMAT (index.json's "format"; a
    folder without one is WebDataset) and FORMAT_HINT (what to do about another format), fills
    `self.shards` in its __init__ after calling this one, and implements `shard_records`.

    image_size: the model's (model.image_size), which the shards must have been written at; None
    when the model reads no image: any shards do, and their image members are not kept."""

    FORMAT = ""
    FORMAT_HINT = ""

    def __init__(self, cfg: DataConfig, specs: list[SourceSpec], n_slots: int, seed: int,
                 image_size: int | None):
        self.cfg, self.seed, self.n_slots, self.image_size = cfg, seed, n_slots, image_size
        self.institution = {s.name: s.institution for s in specs}
        self.weights = {s.name: s.weight for s in specs}
        self.shards: dict[str, list[ShardRef]] = {}
        self._dealt: tuple[tuple[int, int], list[list[ShardRef]]] | None = None

    def check_index(self, spec: SourceSpec, index: dict) -> None:
        """The source's index.json fits this backend and the model; ValueError naming it otherwise."""
        if index.get("format", "wds") != self.FORMAT:
            raise ValueError(f"{spec.uri}: format {index.get('format')!r}; data.backend {self.cfg.backend} "
                             f"reads {self.FORMAT!r} shards{self.FORMAT_HINT}")
        size = index.get("image_size")
        if self.image_size is not None and size is not None and int(size) != self.image_size:
            raise ValueError(f"{spec.uri}: shards have image_size {size}, the model's (model.image_size) "
                             f"is {self.image_size}")

    def warn_if_short(self) -> None:
        """Fewer shards than slots leaves some workers without data: say so once, at start-up."""
        total = sum(len(v) for v in self.shards.values())
        if total < self.n_slots:
            log.warning("%d shards for %d rank x worker slots: some workers get no data", total, self.n_slots)

    def slots(self, epoch: int, n_slots: int) -> list[list[ShardRef]]:
        """This epoch's shards per slot of a dealing into n_slots (dealt once per epoch and process)."""
        if self._dealt is None or self._dealt[0] != (epoch, n_slots):
            dealt = deal_shards(self.shards, self.weights, epoch, self.seed, n_slots)
            self._dealt = ((epoch, n_slots), dealt)
        return self._dealt[1]

    def records_fn(self, epoch: int, slot: int, n_slots: int):
        """The slot's records of this epoch, as a function of (faults, rng): its sources'
        streams interleaved by `rng`, each source's shards one after another."""
        refs = self.slots(epoch, n_slots)[slot]

        def records(faults: FaultCounter, rng: np.random.Generator) -> Iterator[Record]:
            streams = {}
            for name in sorted({r.source for r in refs}):
                mine = [r for r in refs if r.source == name]
                streams[name] = (sum(r.num_samples for r in mine), self._source(mine, faults))
            return interleave(streams, rng)

        return records

    def _source(self, refs: list[ShardRef], faults: FaultCounter) -> Iterator[Record]:
        # A generator function, not a generator expression in the loop above: the expression would
        # read the loop's variables lazily, after the loop has moved on to the last source.
        for ref in refs:
            yield from self.shard_records(ref, faults)

    def shard_records(self, ref: ShardRef, faults: FaultCounter) -> Iterator[Record]:
        """One shard's records in order; bad ones skipped and counted in `faults`."""
        raise NotImplementedError
