"""The pre-training loader: shards -> mixed, decoded, masked batches, resumable exactly.

    loader = build_pretrain_loader(cfg, tokenizer, rank, world_size, seed, model=model_cfg)
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

What a batch holds is the model's (`collate.BatchSpec.for_model`): for a model that reads no image
the workers neither keep nor decode the PNGs and the batch has no pyramid; for one that reads no
text they neither decode nor tokenize the reports and the batch has no tokens. The tuples, and so
the state, are the same whatever the model.

Worker processes live as long as the loader (one DataLoader, persistent across epochs: each
worker plays the next epoch of its slot when the next `for` starts); an epoch left unfinished, a
`load_state_dict` or `close()` shuts them down. With `pin_memory` (set on CUDA) batches arrive in
page-locked memory, so the step's host-to-device copies can overlap compute.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mixvlp_ds.config import ConfigError
from mixvlp_ds.data.collate import BatchSpec, collate, padding_row
from mixvlp_ds.data.config import DataConfig, resolve_sources
from mixvlp_ds.data.dealing import seeded
from mixvlp_ds.data.faults import FaultCounter
from mixvlp_ds.data.ledger import (
    Part,
    assign,
    parts_for,
    plan_from_json,
    remaining_work,
    stream_changes,
    stream_fields,
)
from mixvlp_ds.data.reader import SampleError, decode_labels, decode_pyramid, decode_text
from mixvlp_ds.data.sampler import MixedTuple, MixingSampler, batch_shares

if TYPE_CHECKING:
    from mixvlp_ds.model.config import ModelConfig

log = logging.getLogger("mixvlp_ds.data")
STATE_VERSION = 2


class SlotStream:
    """One worker's play of an epoch: the parts' tuple streams one after another (one part, its own
    slot, unless a resume on another world handed it a plan: ledger.py) -> decoded rows -> batches,
    tagged for the loader with the tuples delivered per slot. `spec` (the model's) says which
    sides of a tuple are decoded."""

    def __init__(self, cfg: DataConfig, spec: BatchSpec, tokenizer, records_fn, epoch: int, parts: list[Part],
                 worker: int, seed: int):
        self.cfg, self.spec, self.tokenizer, self.records_fn = cfg, spec, tokenizer, records_fn
        self.epoch, self.parts, self.worker, self.seed = epoch, parts, worker, seed
        where = ",".join(str(p.slot) for p in parts) or "-"
        self.faults = FaultCounter(cfg.max_skip_fraction, cfg.min_records_before_abort, cfg.skip_log,
                                   where=f"[data slot {where} epoch {epoch}] ")

    def __iter__(self) -> Iterator[dict]:
        cfg = self.cfg
        rows, kept, start = [], [], None
        progress: dict[int, int] = {}  # slot -> tuples delivered, for the batches' tags
        counts: Counter[str] = Counter()
        for part in self.parts:
            sampler = MixingSampler(resolve_sources(cfg), seeded(self.seed, self.epoch, part.slot, 17),
                                    cfg.subset_seed, cfg.negative_rate, cfg.shuffle_buffer, cfg.image_pool,
                                    cfg.report_pool)
            records = self.records_fn(part.slot, part.n_slots)
            tuples = sampler(records(self.faults, seeded(self.seed, self.epoch, part.slot, 19)))
            consumed = 0
            for _ in range(part.skip):  # resume: replay without decoding
                if next(tuples, None) is None:
                    break
                consumed += 1
            progress[part.slot] = consumed
            if not rows:
                start = (part.slot, consumed)
            for t in tuples:
                consumed += 1
                progress[part.slot] = consumed
                row = self._decode(t)
                if row is None:
                    continue
                rows.append(row)
                kept.append(t)
                if len(rows) == cfg.batch_size:
                    yield self._batch(rows, kept, start, progress, counts + sampler.counts)
                    rows, kept, start = [], [], (part.slot, consumed)
            counts += sampler.counts
        self.faults.check()
        if rows and not cfg.drop_last:  # one shape for every batch: fill up with padding rows
            rows += [padding_row(cfg.label_space) for _ in range(cfg.batch_size - len(rows))]
            yield self._batch(rows, kept, start, progress, counts)

    def _decode(self, t: MixedTuple) -> dict | None:
        """Decode the sides of one tuple the batch carries (has_image / has_text say what the tuple
        holds either way); a bad member skips the tuple, counted against the record it came from."""
        spec = self.spec
        src = t.image or t.text
        current = src
        try:
            pyramid = decode_pyramid(t.image, spec.image_size) if t.image and spec.images else None
            current = t.text
            text = decode_text(t.text) if t.text and spec.text else None
            current = src
            labels = decode_labels(src, spec.label_space)
        except SampleError as e:
            self.faults.skip(current.shard, current.key, str(e), already_seen=True)
            return None
        return {"pyramid": pyramid, "text": text, "has_image": t.image is not None,
                "has_text": t.text is not None, "labels": labels, "pair": t.pair, "key": src.key,
                "text_key": t.text.key if t.text else "", "institution": src.institution,
                "patient_id": src.patient_id}

    def _batch(self, rows, tuples, start: tuple[int, int], progress: dict[int, int], counts) -> dict:
        """start: (slot, tuples delivered before this batch): the masks' seed, so a replay redraws them."""
        slot, position = start
        gen = torch.Generator().manual_seed(int(seeded(self.seed, self.epoch, slot, position, 23)
                                                .integers(2**62)))
        batch = collate(rows, self.tokenizer, self.spec, gen)
        batch["shares"] = batch_shares(tuples, [s.institution for s in self.cfg.sources])
        batch["_worker"], batch["_progress"] = self.worker, dict(progress)
        batch["_faults"], batch["_counts"] = self.faults.as_dict(), dict(counts)
        return batch


class _RankDataset(IterableDataset):
    """One rank's epochs. The k-th iteration of a copy (in a persistent worker process, or in this
    process when num_workers is 0) plays epoch `epoch + k`; the first one resumes mid-epoch (the
    rank's `progress`) with DataLoader worker i playing logical worker (i + rotation) % workers.
    Everything here is a snapshot taken when the DataLoader is made: worker copies cannot see the
    loader's state move on."""

    def __init__(self, make_stream, rank: int, num_workers: int, n_workers: int, epoch: int,
                 progress: dict[int, int], rotation: int, plan: dict[int, dict]):
        super().__init__()
        self.make_stream, self.rank = make_stream, rank
        self.num_workers, self.n_workers = num_workers, n_workers
        self.epoch, self.progress, self.rotation, self.plan = epoch, progress, rotation, plan
        self.plays = 0

    def __iter__(self):
        info = get_worker_info()
        i = info.id if info is not None else 0
        first = self.plays == 0
        epoch = self.epoch + self.plays
        self.plays += 1
        workers = max(self.num_workers, 1)
        worker = (i + (self.rotation if first else 0)) % workers
        parts = parts_for(self.plan, epoch, self.rank * workers + worker, self.n_workers,
                          self.progress if first else {})
        return iter(self.make_stream(epoch, worker, parts))


PARENT_POLL = 0.1   # seconds between a worker's looks at its parent (exit_with_parent)


def exit_with_parent(parent: int, worker_id: int = 0) -> None:
    """A DataLoader worker's init: exit as soon as the rank that started it (`parent`) is gone.

    torch's own workers notice a dead parent only when their index queue has been idle for 5 s
    (measured: workers outlived a SIGKILLed rank by 4.7-4.9 s, reading shards meanwhile). A daemon
    thread polls the parent pid every PARENT_POLL s instead. (Not prctl's PR_SET_PDEATHSIG: the
    kernel ties it to the THREAD that forked the worker, so a loader first iterated in a thread that
    ends would lose its workers while the rank lives.)"""
    import threading
    import time

    def alive() -> bool:
        if forked:
            return os.getppid() == parent
        try:   # spawn / forkserver: the rank is not our parent; is it still there?
            os.kill(parent, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def watch() -> None:
        while alive():
            time.sleep(PARENT_POLL)
        os._exit(0)

    forked = os.getppid() == parent

    threading.Thread(target=watch, name=f"exit-with-rank-{parent}", daemon=True).start()


def _slot_stream(cfg: DataConfig, spec: BatchSpec, tokenizer, backend, seed: int, epoch: int, worker: int,
                 parts: list[Part]) -> SlotStream:
    def records_fn(slot: int, n_slots: int):
        return backend.records_fn(epoch, slot, n_slots)

    return SlotStream(cfg, spec, tokenizer, records_fn, epoch, parts, worker, seed)


class PretrainLoader:
    """Iterable of batches (one epoch per iteration) with exact-resume state. See module doc.
    Worker processes stop with close(), at the end of a `with` block, or when the loader is freed.
    model: the config of the model the batches are for (what they hold, sizes, mask ratios)."""

    def __init__(self, cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0, *,
                 model: ModelConfig, pin_memory: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.cfg, self.tokenizer = cfg, tokenizer
        self.spec = BatchSpec.for_model(model, cfg)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.pin_memory = pin_memory
        self.workers = max(cfg.num_workers, 1)
        self.n_workers = world_size * self.workers  # rank x worker slots of this world
        self.specs = resolve_sources(cfg)
        self.epoch = 0
        self.progress: dict[int, int] = {}     # slot -> tuples delivered, this rank's current epoch
        self.plan: dict[int, dict] = {}        # epochs dealt to another world, finished by this one
        self.next_worker = 0
        self.faults: dict[int, dict] = {}
        self.counts: dict[int, dict] = {}
        self._backend = self._make_backend()
        self._dataloader: DataLoader | None = None  # when set, its next iteration plays self.epoch

    # ------------------------------------------------------------ backends
    def _make_backend(self):
        if self.cfg.backend == "streaming":
            from mixvlp_ds.data.mds_backend import MdsRecords as Backend
        else:
            from mixvlp_ds.data.wds_backend import WdsRecords as Backend
        return Backend(self.cfg, self.specs, self.n_workers, self.seed, self.spec.image_size)

    def _open(self) -> DataLoader:
        """The DataLoader that plays epochs from self.epoch on, resuming at self.progress."""
        if self._dataloader is None:
            # a partial of a module function, not a bound method: the dataset must not hold the
            # loader, or loader -> DataLoader -> dataset -> loader is a cycle that only the garbage
            # collector frees, at a random later moment, where the workers' shutdown then waits 5 s
            # per worker (measured: 10 s for 2 workers, inside whatever runs next)
            make_stream = functools.partial(_slot_stream, self.cfg, self.spec, self.tokenizer, self._backend,
                                            self.seed)
            ds = _RankDataset(make_stream, self.rank, self.cfg.num_workers, self.n_workers, self.epoch,
                              dict(self.progress), self.next_worker, dict(self.plan))
            workers = self.cfg.num_workers
            # its own generator: DataLoader draws its workers' base seed when an iterator starts, and
            # from torch's global RNG that draw would shift the training step's random stream
            # (dropout) differently in a resumed run than in an uninterrupted one
            generator = torch.Generator().manual_seed(int(seeded(self.seed, self.rank, 29).integers(2**62)))
            self._dataloader = DataLoader(ds, batch_size=None, num_workers=workers,
                                          pin_memory=self.pin_memory, generator=generator,
                                          prefetch_factor=self.cfg.prefetch_factor if workers else None,
                                          persistent_workers=workers > 0,
                                          worker_init_fn=functools.partial(exit_with_parent, os.getpid()))
        return self._dataloader

    def __enter__(self) -> PretrainLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (they live across epochs otherwise). DataLoader has no public
        call for it; its iterator's own shutdown is what its finaliser runs."""
        it = getattr(getattr(self, "_dataloader", None), "_iterator", None)   # None: never opened
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
                self.progress.update(batch.pop("_progress"))
                self.faults[w], self.counts[w] = batch.pop("_faults"), batch.pop("_counts")
                self.next_worker = (w + 1) % self.workers
                yield batch
            done = True
        finally:
            if done:
                self.epoch, self.progress, self.next_worker = epoch + 1, {}, 0
                self.plan = {e: v for e, v in self.plan.items() if e > epoch}
            else:  # left mid-epoch: the workers are ahead of our state, start them anew next time
                self.close()

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Small, JSON-able; save one per rank. The RNG state is not stored as bytes: every random
        choice of a worker is a pure function of (seed, epoch, slot, position), so epoch and
        position ARE the RNG state. `plan`: epochs still to finish for another world (ledger.py)."""
        return {"version": STATE_VERSION, "epoch": self.epoch,
                "progress": {str(s): n for s, n in sorted(self.progress.items())},
                "plan": {str(e): v for e, v in sorted(self.plan.items())},
                "next_worker": self.next_worker, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self.workers, "seed": self.seed, "backend": self.cfg.backend,
                "stream": stream_fields(self.cfg, self.seed),
                "rng": {"seed": self.seed, "epoch": self.epoch,
                        "derivation": "SeedSequence(seed, epoch, slot)"}}

    def load_state_dict(self, state: dict) -> None:
        """This rank's own state, saved by a world of the same size and workers per rank (else:
        load_states of every rank's state)."""
        own = normalised(state)
        if own["world_size"] != self.world_size or own["num_workers"] != self.workers:
            raise ValueError(f"this loader state was saved by {own['world_size']} ranks x "
                             f"{own['num_workers']} workers, this loader has {self.world_size} x "
                             f"{self.workers}: load_states(every rank's state) resumes it")
        self.close()
        if not self._stream_changed([own]):
            self._continue(own)

    def _continue(self, own: dict) -> None:
        self.epoch, self.progress = own["epoch"], own["progress"]
        self.plan, self.next_worker = own["plan"], own["next_worker"]

    def load_states(self, states: list[dict]) -> None:
        """Resume from the loader states of ALL ranks of a checkpoint (rank order). Same world size and
        workers: this rank continues its own state exactly. Another world: the epochs in flight are
        finished by this world as ledger.py plans them (data.on_world_size_change=exact, the default),
        restarted or skipped (restart_epoch / next_epoch), or refused (error)."""
        self.close()
        states = [normalised(s) for s in states]
        first = states[0]
        if len(states) != first["world_size"] or [s["rank"] for s in states] != list(range(len(states))):
            raise ValueError(f"loader states of ranks {[s['rank'] for s in states]} given, the checkpoint's "
                             f"world had {first['world_size']} ranks: all of them are needed, in rank order")
        if self._stream_changed(states):
            return
        if len(states) == self.world_size and first["num_workers"] == self.workers:
            self._continue(states[self.rank])
            return
        policy = self.cfg.on_world_size_change
        what = (f"saved with world_size {first['world_size']} x {first['num_workers']} workers, "
                f"now {self.world_size} x {self.workers}")
        if policy == "error":
            raise ConfigError(f"data loader state {what} (data.on_world_size_change=exact finishes the "
                             f"saved epoch on this world; restart_epoch | next_epoch also continue)")
        self.progress, self.next_worker, self.plan = {}, 0, {}
        if policy == "exact":
            work = remaining_work(states)
            self.plan = assign(work, self.n_workers)
            self.epoch = min(work) if work else max(s["epoch"] for s in states)
            left = sum(len(v[1]) for v in work.values())
            log.info("data loader state %s: %d unfinished slot stream(s) of epoch(s) %s are dealt to this "
                     "world's %d worker(s); each delivers the rest of its tuples exactly once", what, left,
                     sorted(work), self.n_workers)
            return
        self.epoch = min(s["epoch"] for s in states) + (policy == "next_epoch")
        log.warning("data loader state %s: shards are dealt differently, so epoch %d %s", what,
                    self.epoch, "restarts from its beginning" if policy == "restart_epoch" else "begins")

    def _stream_changed(self, states: list[dict]) -> bool:
        """Refuse a state of another seed or backend; with other sources or mixing (the saved
        positions mean nothing then) refuse, or start the saved epoch (or the next) from its
        beginning on this world (data.on_stream_change): True when it did."""
        state = states[0]
        if state["seed"] != self.seed or state["backend"] != self.cfg.backend:
            raise ValueError(f"data loader state is for seed {state['seed']} / backend {state['backend']}, "
                             f"this loader has {self.seed} / {self.cfg.backend}")
        now = stream_fields(self.cfg, self.seed)
        changes = stream_changes(state["stream"], now) if "stream" in state else []
        if not changes:
            return False
        if self.cfg.on_stream_change == "error":
            raise ConfigError("the data sources or mixing changed since the checkpoint, so its positions in "
                              "the data mean nothing now: " + "; ".join(changes)
                              + " (data.on_stream_change=restart_epoch starts the saved epoch again with "
                              "the new data; next_epoch starts the next one)")
        self.epoch = min(s["epoch"] for s in states) + (self.cfg.on_stream_change == "next_epoch")
        self.progress, self.plan, self.next_worker = {}, {}, 0
        log.warning("data changed since the checkpoint (%s): epoch %d starts from its beginning",
                    "; ".join(changes), self.epoch)
        return True

    def fault_summary(self) -> dict:
        seen = sum(f["seen"] for f in self.faults.values())
        skipped = sum(f["skipped"] for f in self.faults.values())
        return {"seen": seen, "skipped": skipped, "by_worker": dict(self.faults),
                "routing": dict(self.counts)}


def normalised(state: dict) -> dict:
    """A loader state with int keys (JSON makes them strings) and version 1's fields converted."""
    version = state.get("version")
    if version not in (1, STATE_VERSION):
        raise ValueError(f"data loader state version {version!r}, expected {STATE_VERSION}")
    out = dict(state)
    if version == 1:  # per-worker counts of the rank's own slots, no plan
        base = state["rank"] * state["num_workers"]
        out["progress"] = {base + w: n for w, n in enumerate(state["consumed"])}
        out["plan"] = {}
    out["progress"] = {int(s): int(n) for s, n in out["progress"].items()}
    out["plan"] = plan_from_json(out["plan"])
    return out


def build_pretrain_loader(cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1, seed: int = 0, *,
                          model: ModelConfig, pin_memory: bool = False) -> PretrainLoader:
    """The pre-training batches of one rank for `model` (see PretrainLoader and docs/data.md)."""
    cfg.validate()
    return PretrainLoader(cfg, tokenizer, rank, world_size, seed, model=model, pin_memory=pin_memory)
