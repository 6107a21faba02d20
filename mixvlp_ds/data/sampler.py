"""The mixing sampler: records of several institutions -> (image, report, pair) tuples.

This is where the paper's data scenarios happen (docs/method.md, "Data sampler and scenarios"). Each record is
routed by its source's rules (config.resolve_sources):

    paired source, patient in the P% subset   -> a true pair (pair = 1); with probability
                                                 negative_rate its image is re-paired instead
    paired source, outside the subset          -> rest = drop | repair | split
    image_only source                          -> re-paired with reports of `pair_with`, or an
                                                 image-only row
    text_only source                           -> feeds the report pool when a source pairs with
                                                 it, else a text-only row

Re-pairing draws from bounded buffers: a report pool per source (a reservoir: a new report
replaces a random old one once full; draws are uniform, with replacement) and an image pool of
images waiting for a report (a random one is coupled whenever the pool is over capacity, the rest
at the end of the stream). The RNG is seeded per (epoch, rank, worker), so the coupling differs
each epoch and is identical when an epoch is replayed. A re-paired tuple never couples an image
with a report of the same study (same institution and study id). Finally a shuffle buffer mixes
the tuples of all routes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from mixvlp_ds.data.config import SourceSpec
from mixvlp_ds.data.reader import Record
from mixvlp_ds.data.subset import in_paired_subset

KINDS = ("paired", "repaired", "image_only", "text_only")


@dataclass
class MixedTuple:
    """One row of a batch before decoding; `kind` is one of KINDS."""

    image: Record | None
    text: Record | None
    pair: float
    kind: str

    @property
    def institution(self) -> str:
        return (self.image or self.text).institution


class MixingSampler:
    """Turns a record stream into a shuffled tuple stream (one per worker, single-threaded).

    sources: resolved SourceSpecs (config.resolve_sources); counts: Counter of routing outcomes
    (paired, repaired, image_only, text_only, dropped, unpairable, incomplete)."""

    def __init__(self, sources: list[SourceSpec], rng: np.random.Generator, subset_seed: int = 0,
                 negative_rate: float = 0.0, shuffle_buffer: int = 1000, image_pool: int = 256,
                 report_pool: int = 1024, on_unpairable=None):
        self.specs = {s.name: s for s in sources}
        self.rng = rng
        self.subset_seed, self.negative_rate = subset_seed, negative_rate
        self.shuffle_cap, self.image_cap, self.report_cap = shuffle_buffer, image_pool, report_pool
        # Which sources' reports are drawn from: targets of pair_with, own source for re-pairing.
        self.pooled = {s.pair_with or s.name for s in sources
                       if (s.role == "paired" and (s.rest == "repair" or negative_rate > 0))
                       or (s.role == "image_only" and s.pair_with)}
        self.report_pools: dict[str, list[Record]] = {name: [] for name in self.pooled}
        self.image_pool: list[tuple[Record, str]] = []
        self.buffer: list[MixedTuple] = []
        self.counts: Counter[str] = Counter()
        self.on_unpairable = on_unpairable  # callback(record, reason) for the fault log

    # --------------------------------------------------------------- the stream
    def __call__(self, records: Iterable[Record]) -> Iterator[MixedTuple]:
        for rec in records:
            self.route(rec)
            self._couple_overflow()
            yield from self._shuffle_overflow()
        order = self.rng.permutation(len(self.image_pool))
        pending, self.image_pool = [self.image_pool[i] for i in order], []
        for img, target in pending:
            self._couple(img, target)
        while self.buffer:
            yield self._pop(self.buffer)

    def route(self, rec: Record) -> None:
        spec = self.specs[rec.source]
        if spec.role == "text_only":
            if not rec.has_text:
                self.counts["incomplete"] += 1
            elif rec.source in self.pooled:
                self._add_report(rec)
            else:
                self._emit(MixedTuple(None, rec, 0.0, "text_only"))
            return
        if spec.role == "image_only":
            if not rec.has_image:
                self.counts["incomplete"] += 1
            elif spec.pair_with:
                self._add_image(rec, spec.pair_with)
            else:
                self._emit(MixedTuple(rec, None, 0.0, "image_only"))
            return
        # paired source
        if not (rec.has_image and rec.has_text):
            self.counts["incomplete"] += 1
            return
        if in_paired_subset(rec.patient_id, spec.percent, self.subset_seed):
            if rec.source in self.pooled:
                self._add_report(rec)
            if self.negative_rate > 0 and self.rng.random() < self.negative_rate:
                self._add_image(rec, spec.pair_with or spec.name)
            else:
                self._emit(MixedTuple(rec, rec, 1.0, "paired"))
        elif spec.rest == "repair":
            self._add_report(rec)
            self._add_image(rec, spec.pair_with or spec.name)
        elif spec.rest == "split":
            self._emit(MixedTuple(rec, None, 0.0, "image_only"))
            self._emit(MixedTuple(None, rec, 0.0, "text_only"))
        else:
            self.counts["dropped"] += 1

    # --------------------------------------------------------------- buffers
    def _add_report(self, rec: Record) -> None:
        pool = self.report_pools.setdefault(rec.source, [])
        if len(pool) < self.report_cap:
            pool.append(rec)
        else:
            pool[int(self.rng.integers(len(pool)))] = rec

    def _add_image(self, rec: Record, target: str) -> None:
        self.image_pool.append((rec, target))

    def _couple_overflow(self) -> None:
        while len(self.image_pool) > self.image_cap:
            img, target = self._pop(self.image_pool)
            self._couple(img, target)

    def _couple(self, img: Record, target: str) -> None:
        report = self._draw_report(self.report_pools.get(target, []), img.study)
        if report is None:
            self.counts["unpairable"] += 1
            if self.on_unpairable:
                self.on_unpairable(img, f"no report of {target} from another study to pair with")
            return
        self._emit(MixedTuple(img, report, 0.0, "repaired"))

    def _draw_report(self, pool: list[Record], study: tuple[str, str]) -> Record | None:
        """A uniform draw among pool reports of another study (None if there is none)."""
        n = len(pool)
        for _ in range(8):  # almost always succeeds at once; the scan handles tiny pools
            if not n:
                return None
            cand = pool[int(self.rng.integers(n))]
            if cand.study != study:
                return cand
        others = [r for r in pool if r.study != study]
        return others[int(self.rng.integers(len(others)))] if others else None

    def _emit(self, t: MixedTuple) -> None:
        self.counts[t.kind] += 1
        self.buffer.append(t)

    def _shuffle_overflow(self) -> Iterator[MixedTuple]:
        while len(self.buffer) > self.shuffle_cap:
            yield self._pop(self.buffer)

    def _pop(self, items: list):
        """Remove and return a uniformly random element in O(1) (swap with the last)."""
        i = int(self.rng.integers(len(items)))
        items[i], items[-1] = items[-1], items[i]
        return items.pop()


def batch_shares(tuples: list[MixedTuple], institutions=()) -> dict[str, float]:
    """Realised shares of one batch, for logging: each kind, and each institution (of the image;
    every name in `institutions` appears, 0.0 when absent, so logged keys are stable)."""
    n = max(len(tuples), 1)
    kinds = Counter(t.kind for t in tuples)
    out = {k: kinds.get(k, 0) / n for k in KINDS}
    insts = Counter(t.institution for t in tuples)
    for inst in sorted(set(institutions) | set(insts)):
        out[f"institution/{inst}"] = insts.get(inst, 0) / n
    return out
