"""The pre-training loader: shards -> mixed, decoded, masked batches, resumable exactly.

    loader = build_pretrain_loader(cfg, tokenizer, rank, world_size, seed)
    for batch in loader:            # one epoch per `for`; loader.epoch counts them
        ...
        ckpt["data"] = loader.state_dict()
    loader.load_state_dict(ckpt["data"])   # the next batches equal the uninterrupted run's

Work split: each epoch every source's shard list is shuffled (seeded by epoch) and dealt to
world_size x num_workers "slots" (greedily by sample count), so each shard is read by exactly one
worker of one rank. A slot interleaves its sources, runs the mixing sampler, and yields whole
batches. All randomness in a slot is seeded by (seed, epoch, slot), so an epoch replays
identically; the state is just the epoch and how many tuples each worker has delivered.
Restoring replays each worker's slot from the epoch start, skipping (without decoding) the
tuples already delivered, and rotates the workers so the round-robin continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixvlp_ds.data.collate import collate
from mixvlp_ds.data.config import DataConfig, resolve_sources
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.reader import (
    Record,
    SampleError,
    ShardRef,
    decode_labels,
    decode_pyramid,
    decode_text,
    iter_shard,
    list_shards,
    read_index,
)
from mixvlp_ds.data.sampler import MixedTuple, MixingSampler, batch_shares

log = logging.getLogger("mixvlp_ds.data")
STATE_VERSION = 1


def seeded(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


def deal_shards(shards: dict[str, list[ShardRef]], weights: dict[str, float], epoch: int, seed: int,
                n_slots: int) -> list[list[ShardRef]]:
    """This epoch's shards of every source, dealt to `n_slots` slots (rank-major: slot = rank *
    workers + worker). weight w: the shard list is repeated floor(w) times (a new shuffle each
    time) plus a fraction of one more shuffle; each source is dealt greedily to the slot with
    the fewest samples of that source, so every slot gets a share of every institution."""
    slots: list[list[ShardRef]] = [[] for _ in range(n_slots)]
    for si, (name, refs) in enumerate(sorted(shards.items())):
        rng = seeded(seed, epoch, si, 11)
        want = max(1, round(weights[name] * len(refs))) if refs else 0
        order: list[ShardRef] = []
        while len(order) < want:
            order += [refs[i] for i in rng.permutation(len(refs))]
        load = [0] * n_slots
        for ref in order[:want]:
            k = min(range(n_slots), key=lambda j: (load[j], j))
            slots[k].append(ref)
            load[k] += max(ref.num_samples, 1)
    for k, slot in enumerate(slots):
        rng = seeded(seed, epoch, k, 13)
        slots[k] = [slot[i] for i in rng.permutation(len(slot))]
    return slots


def interleave(streams: dict[str, tuple[int, Iterator[Record]]],
               rng: np.random.Generator) -> Iterator[Record]:
    """Records of several sources in one stream: the next one comes from a source chosen with
    probability proportional to its remaining records, so all sources end together."""
    left = {name: max(n, 1) for name, (n, _) in streams.items()}
    iters = {name: it for name, (_, it) in streams.items()}
    while iters:
        if len(iters) == 1:  # the draw is certain: skip rng.choice (~20 us a record; rng is ours alone)
            yield from next(iter(iters.values()))
            return
        names = sorted(iters)
        p = np.array([left[n] for n in names], dtype=np.float64)
        name = names[int(rng.choice(len(names), p=p / p.sum()))]
        rec = next(iters[name], None)
        if rec is None:
            del iters[name]
            continue
        left[name] = max(left[name] - 1, 1)
        yield rec


class SlotStream:
    """One worker's epoch: records -> sampler -> decoded rows -> batches (with tags for the loader)."""

    def __init__(self, cfg: DataConfig, tokenizer, records_fn, epoch: int, slot: int, worker: int, skip: int,
                 seed: int):
        self.cfg, self.tokenizer, self.records_fn = cfg, tokenizer, records_fn
        self.epoch, self.slot, self.worker, self.skip, self.seed = epoch, slot, worker, skip, seed
        self.faults = FaultCounter(cfg.max_skip_fraction, cfg.min_records_before_abort, cfg.skip_log,
                                   where=f"[data slot {slot} epoch {epoch}] ")

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        rng = seeded(self.seed, self.epoch, self.slot, 17)
        sampler = MixingSampler(resolve_sources(cfg), rng, cfg.subset_seed, cfg.negative_rate,
                                cfg.shuffle_buffer, cfg.image_pool, cfg.report_pool)
        tuples = sampler(self.records_fn(self.faults, seeded(self.seed, self.epoch, self.slot, 19)))
        consumed = 0
        for _ in range(self.skip):  # resume: replay without decoding
            if next(tuples, None) is None:
                break
            consumed += 1
        rows, kept = [], []
        start = consumed
        for t in tuples:
            consumed += 1
            row = self._decode(t)
            if row is None:
                continue
            rows.append(row)
            kept.append(t)
            if len(rows) == cfg.batch_size:
                yield self._batch(rows, kept, start, consumed, sampler)
                rows, kept, start = [], [], consumed
        self.faults.check()
        if rows and not cfg.drop_last:
            yield self._batch(rows, kept, start, consumed, sampler)

    def _decode(self, t: MixedTuple) -> dict | None:
        """Decode one tuple; a bad member skips the tuple, counted against the record it came from."""
        cfg = self.cfg
        src = t.image or t.text
        current = src
        try:
            pyramid = decode_pyramid(t.image, cfg.image_size) if t.image else None
            current = t.text
            text = decode_text(t.text) if t.text else None
            current = src
            labels = decode_labels(src, cfg.label_space)
        except SampleError as e:
            self.faults.skip(current.shard, current.key, str(e), already_seen=True)
            return None
        return {"pyramid": pyramid, "text": text, "labels": labels, "pair": t.pair, "key": src.key,
                "text_key": t.text.key if t.text else "", "institution": src.institution,
                "patient_id": src.patient_id}

    def _batch(self, rows, tuples, start: int, consumed: int, sampler: MixingSampler) -> dict:
        gen = torch.Generator().manual_seed(int(seeded(self.seed, self.epoch, self.slot, start, 23)
                                                .integers(2**62)))
        batch = collate(rows, self.tokenizer, mask_text=self.cfg.mask_text, label_space=self.cfg.label_space,
                        image_size=self.cfg.image_size, max_text_len=self.cfg.max_text_len,
                        mask_prob=self.cfg.mask_text_prob, pad_to_max=self.cfg.pad_to_max, generator=gen)
        batch["shares"] = batch_shares(tuples, [s.institution for s in self.cfg.sources])
        batch["_worker"], batch["_consumed"] = self.worker, consumed
        batch["_faults"], batch["_counts"] = self.faults.as_dict(), dict(sampler.counts)
        return batch


class _EpochDataset(IterableDataset):
    """One rank's epoch; DataLoader worker i plays logical worker (i + rotation) % num_workers."""

    def __init__(self, make_stream, num_workers: int, rotation: int):
        super().__init__()
        self.make_stream, self.num_workers, self.rotation = make_stream, num_workers, rotation

    def __iter__(self):
        info = get_worker_info()
        i = info.id if info is not None else 0
        worker = (i + self.rotation) % max(self.num_workers, 1)
        return iter(self.make_stream(worker))


class PretrainLoader:
    """Iterable of batches (one epoch per iteration) with exact-resume state. See module doc."""

    def __init__(self, cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.workers = max(cfg.num_workers, 1)
        self.specs = resolve_sources(cfg)
        self.epoch = 0
        self.consumed = [0] * self.workers
        self.next_worker = 0
        self.faults: dict[int, dict] = {}
        self.counts: dict[int, dict] = {}
        self._backend = self._make_backend()

    # ------------------------------------------------------------ backends
    def _make_backend(self):
        if self.cfg.backend == "streaming":
            from mixvlp_ds.data.mds_backend import MdsRecords

            return MdsRecords(self.cfg, self.specs, self.rank, self.world_size, self.seed)
        return WdsRecords(self.cfg, self.specs, self.rank, self.world_size, self.seed)

    def _stream(self, epoch: int, consumed: list[int], worker: int) -> SlotStream:
        slot = self.rank * self.workers + worker
        return SlotStream(self.cfg, self.tokenizer, self._backend.records_fn(epoch, worker), epoch, slot,
                          worker, consumed[worker], self.seed)

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict]:
        epoch, consumed = self.epoch, list(self.consumed)
        self._backend.start_epoch(epoch)
        ds = _EpochDataset(lambda w: self._stream(epoch, consumed, w), self.cfg.num_workers, self.next_worker)
        if self.cfg.num_workers == 0:
            it = iter(ds)
        else:
            it = iter(DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, prefetch_factor=2,
                                 persistent_workers=False))
        for batch in it:
            w = batch.pop("_worker")
            self.consumed[w] = batch.pop("_consumed")
            self.faults[w], self.counts[w] = batch.pop("_faults"), batch.pop("_counts")
            self.next_worker = (w + 1) % self.workers
            yield batch
        self.epoch, self.consumed, self.next_worker = epoch + 1, [0] * self.workers, 0

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Small, JSON-able; save one per rank. The RNG state is not stored as bytes: every random
        choice of a worker is a pure function of (seed, epoch, slot, position), so epoch and
        position ARE the RNG state."""
        return {"version": STATE_VERSION, "epoch": self.epoch, "consumed": list(self.consumed),
                "next_worker": self.next_worker, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self.workers, "seed": self.seed, "backend": self.cfg.backend,
                "rng": {"seed": self.seed, "epoch": self.epoch,
                        "derivation": "SeedSequence(seed, epoch, slot)"}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')!r}, expected {STATE_VERSION}")
        if state["seed"] != self.seed or state["backend"] != self.cfg.backend:
            raise ValueError(f"data loader state is for seed {state['seed']} / backend {state['backend']}, "
                             f"this loader has {self.seed} / {self.cfg.backend}")
        same = state["world_size"] == self.world_size and state["num_workers"] == self.workers
        self.epoch = int(state["epoch"])
        if same:
            self.consumed, self.next_worker = list(state["consumed"]), int(state["next_worker"])
            return
        policy = self.cfg.on_world_size_change
        what = (f"saved with world_size {state['world_size']} x {state['num_workers']} workers, "
                f"now {self.world_size} x {self.workers}")
        if policy == "error":
            raise ValueError(f"data loader state {what}: exact resume needs the same split "
                             f"(data.on_world_size_change=restart_epoch|next_epoch to continue)")
        self.consumed, self.next_worker = [0] * self.workers, 0
        if policy == "next_epoch":
            self.epoch += 1
        log.warning("data loader state %s: shards are dealt differently, so epoch %d %s", what,
                    self.epoch, "restarts from its beginning" if policy == "restart_epoch" else "begins")

    def fault_summary(self) -> dict:
        seen = sum(f["seen"] for f in self.faults.values())
        skipped = sum(f["skipped"] for f in self.faults.values())
        return {"seen": seen, "skipped": skipped, "by_worker": dict(self.faults),
                "routing": dict(self.counts)}


class WdsRecords:
    """WebDataset tar shards listed by index.json, local or S3."""

    def __init__(self, cfg: DataConfig, specs, rank: int, world_size: int, seed: int):
        self.cfg, self.rank, self.seed = cfg, rank, seed
        self.workers = max(cfg.num_workers, 1)
        self.n_slots = world_size * self.workers
        self.shards: dict[str, list[ShardRef]] = {}
        self.institution = {s.name: s.institution for s in specs}
        self.weights = {s.name: s.weight for s in specs}
        for s in specs:
            index = read_index(s.uri, cfg.s3_retries, cfg.s3_backoff)
            if index.get("format", "wds") != "wds":
                raise ValueError(f"{s.uri}: format {index.get('format')!r}; "
                                 f"data.backend wds reads 'wds' shards")
            if int(index.get("image_size", cfg.image_size)) != cfg.image_size:
                raise ValueError(f"{s.uri}: shards have image_size {index['image_size']}, "
                                 f"data.image_size is {cfg.image_size}")
            self.shards[s.name] = list_shards(s.uri, s.split, s.name, index)
        total = sum(len(v) for v in self.shards.values())
        if total < self.n_slots:
            log.warning("%d shards for %d rank x worker slots: some workers get no data", total, self.n_slots)
        self.epoch_slots: list[list[ShardRef]] = []

    def start_epoch(self, epoch: int) -> None:
        self.epoch_slots = deal_shards(self.shards, self.weights, epoch, self.seed, self.n_slots)

    def records_fn(self, epoch: int, worker: int):
        refs = self.epoch_slots[self.rank * self.workers + worker]
        cfg = self.cfg

        def records(faults: FaultCounter, rng: np.random.Generator) -> Iterator[Record]:
            streams = {}
            for name in sorted({r.source for r in refs}):
                mine = [r for r in refs if r.source == name]
                streams[name] = (sum(r.num_samples for r in mine), source_records(mine, name, faults))
            return interleave(streams, rng)

        def source_records(mine: list[ShardRef], name: str, faults: FaultCounter) -> Iterator[Record]:
            # A function, not a generator expression in the loop above: the expression would read
            # `name` lazily and stamp every record with the last source's institution.
            for ref in mine:
                yield from iter_shard(ref, faults, self.institution[name], cfg.s3_retries, cfg.s3_backoff)

        return records


def build_pretrain_loader(cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1,
                          seed: int = 0) -> PretrainLoader:
    """The pre-training batches of one rank (see PretrainLoader and docs/data.md)."""
    cfg.validate()
    return PretrainLoader(cfg, tokenizer, rank, world_size, seed)
