"""The pre-training loader: shards -> mixed, decoded, masked batches, resumable exactly.

    loader = build_pretrain_loader(cfg, tokenizer, rank, world_size, seed)
    for batch in loader:            # one epoch per `for`; loader.epoch counts them
        ...
        ckpt["data"] = loader.state_dict()
    loader.load_state_dict(ckpt["data"])   # the next batches equal the uninterrupted run's

Work split: each epoch every source's shard list is shuffled (seeded by epoch) and dealt to
world_size x num_workers "slots" (greedily by sample count), so each shard is read by exactly one
worker of one rank. A slot interleaves its sources, runs the mixing sampler, and yields whole
batches of exactly `batch_size` rows (a short last one is filled with padding rows that carry no
loss, or dropped with `drop_last`), each with its word and patch masks. All randomness in a slot
is seeded by (seed, epoch, slot), so an epoch replays identically; the state is just the epoch
and how many tuples each worker has delivered. Restoring replays each worker's slot from the
epoch start, skipping (without decoding) the tuples already delivered, and rotates the workers so
the round-robin continues where it stopped.

Worker processes live as long as the loader (one DataLoader, persistent across epochs: each
worker plays the next epoch of its slot when the next `for` starts); an epoch left unfinished, a
`load_state_dict` or `close()` shuts them down. With `pin_memory` (set on CUDA) batches arrive in
page-locked memory, so the step's host-to-device copies can overlap compute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixvlp_ds.data.collate import BatchSpec, collate, padding_row
from mixvlp_ds.data.config import DataConfig, resolve_sources
from mixvlp_ds.data.dealing import deal_shards, interleave, seeded
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.patch_masking import PatchMasking
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


class SlotStream:
    """One worker's epoch: records -> sampler -> decoded rows -> batches (with tags for the loader)."""

    def __init__(self, cfg: DataConfig, tokenizer, records_fn, epoch: int, slot: int, worker: int, skip: int,
                 seed: int, patch_masking: PatchMasking | None = None):
        self.cfg, self.tokenizer, self.records_fn = cfg, tokenizer, records_fn
        self.epoch, self.slot, self.worker, self.skip, self.seed = epoch, slot, worker, skip, seed
        self.spec = BatchSpec.for_pretraining(cfg, patch_masking)
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
        if rows and not cfg.drop_last:  # one shape for every batch: fill up with padding rows
            rows += [padding_row(cfg.label_space) for _ in range(cfg.batch_size - len(rows))]
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
        batch = collate(rows, self.tokenizer, self.spec, gen)
        batch["shares"] = batch_shares(tuples, [s.institution for s in self.cfg.sources])
        batch["_worker"], batch["_consumed"] = self.worker, consumed
        batch["_faults"], batch["_counts"] = self.faults.as_dict(), dict(sampler.counts)
        return batch


class _RankDataset(IterableDataset):
    """One rank's epochs. The k-th iteration of a copy (in a persistent worker process, or in this
    process when num_workers is 0) plays epoch `epoch + k`; the first one resumes mid-epoch
    (`consumed`) and with DataLoader worker i playing logical worker (i + rotation) % workers."""

    def __init__(self, make_stream, num_workers: int, epoch: int, consumed: list[int], rotation: int):
        super().__init__()
        self.make_stream, self.num_workers = make_stream, num_workers
        self.epoch, self.consumed, self.rotation, self.plays = epoch, consumed, rotation, 0

    def __iter__(self):
        info = get_worker_info()
        i = info.id if info is not None else 0
        first = self.plays == 0
        epoch = self.epoch + self.plays
        self.plays += 1
        worker = (i + (self.rotation if first else 0)) % max(self.num_workers, 1)
        return iter(self.make_stream(epoch, worker, self.consumed[worker] if first else 0))


class PretrainLoader:
    """Iterable of batches (one epoch per iteration) with exact-resume state. See module doc."""

    def __init__(self, cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0,
                 patch_masking: PatchMasking | None = None, pin_memory: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.patch_masking, self.pin_memory = patch_masking, pin_memory
        self.workers = max(cfg.num_workers, 1)
        self.specs = resolve_sources(cfg)
        self.epoch = 0
        self.consumed = [0] * self.workers
        self.next_worker = 0
        self.faults: dict[int, dict] = {}
        self.counts: dict[int, dict] = {}
        self._backend = self._make_backend()
        self._dataloader: DataLoader | None = None  # when set, its next iteration plays self.epoch

    # ------------------------------------------------------------ backends
    def _make_backend(self):
        if self.cfg.backend == "streaming":
            from mixvlp_ds.data.mds_backend import MdsRecords

            return MdsRecords(self.cfg, self.specs, self.rank, self.world_size, self.seed)
        return WdsRecords(self.cfg, self.specs, self.rank, self.world_size, self.seed)

    def _stream(self, epoch: int, worker: int, skip: int) -> SlotStream:
        slot = self.rank * self.workers + worker
        return SlotStream(self.cfg, self.tokenizer, self._backend.records_fn(epoch, worker), epoch, slot,
                          worker, skip, self.seed, self.patch_masking)

    def _open(self) -> DataLoader:
        """The DataLoader that plays epochs from self.epoch on, resuming at self.consumed."""
        if self._dataloader is None:
            ds = _RankDataset(self._stream, self.cfg.num_workers, self.epoch, list(self.consumed),
                              self.next_worker)
            workers = self.cfg.num_workers
            # its own generator: DataLoader draws its workers' base seed when an iterator starts, and
            # from torch's global RNG that draw would shift the training step's random stream
            # (dropout) differently in a resumed run than in an uninterrupted one
            generator = torch.Generator().manual_seed(int(seeded(self.seed, self.rank, 29).integers(2**62)))
            self._dataloader = DataLoader(ds, batch_size=None, num_workers=workers,
                                          pin_memory=self.pin_memory, generator=generator,
                                          prefetch_factor=self.cfg.prefetch_factor if workers else None,
                                          persistent_workers=workers > 0)
        return self._dataloader

    def close(self) -> None:
        """Stop the worker processes (they live across epochs otherwise). DataLoader has no public
        call for it; its iterator's own shutdown is what its finaliser runs."""
        it = getattr(self._dataloader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._dataloader = None

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch
        done = False
        try:
            for batch in self._open():
                w = batch.pop("_worker")
                self.consumed[w] = batch.pop("_consumed")
                self.faults[w], self.counts[w] = batch.pop("_faults"), batch.pop("_counts")
                self.next_worker = (w + 1) % self.workers
                yield batch
            done = True
        finally:
            if done:
                self.epoch, self.consumed, self.next_worker = epoch + 1, [0] * self.workers, 0
            else:  # left mid-epoch: the workers are ahead of our state, start them anew next time
                self.close()

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
        self.close()
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
                                 f"the model's (data.image_size) is {cfg.image_size}")
            self.shards[s.name] = list_shards(s.uri, s.split, s.name, index)
        total = sum(len(v) for v in self.shards.values())
        if total < self.n_slots:
            log.warning("%d shards for %d rank x worker slots: some workers get no data", total, self.n_slots)
        self._dealt: tuple[int, list[list[ShardRef]]] | None = None

    def slots(self, epoch: int) -> list[list[ShardRef]]:
        """This epoch's shards per slot (dealt once per epoch and process)."""
        if self._dealt is None or self._dealt[0] != epoch:
            self._dealt = (epoch, deal_shards(self.shards, self.weights, epoch, self.seed, self.n_slots))
        return self._dealt[1]

    def records_fn(self, epoch: int, worker: int):
        refs = self.slots(epoch)[self.rank * self.workers + worker]
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


def build_pretrain_loader(cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0,
                          patch_masking: PatchMasking | None = None,
                          pin_memory: bool = False) -> PretrainLoader:
    """The pre-training batches of one rank (see PretrainLoader and docs/data.md)."""
    cfg.validate()
    return PretrainLoader(cfg, tokenizer, rank, world_size, seed, patch_masking, pin_memory)
