"""Elastic checkpoints that do not stall the step: a host snapshot, then a low-priority writer thread.

    writer = BackgroundWriter(rank, world_size)      # collective when world_size > 1 (its gloo group)
    share = writer.snapshot(engine)                  # collective; the only part the step waits for
    writer.submit(share, tag_dir, on_done)           # returns at once; training goes on
    writer.busy() / writer.wait() / writer.errors / writer.close()

`snapshot` copies this rank's share of the elastic checkpoint (universal.snapshot_share: the full
fp32 weights and Adam moments of the parameters it owns) into one host buffer reused from save to
save (pinned on CUDA, so the copies from the GPU are asynchronous and fast; plain on a CPU).
`submit` starts a thread at niceness 19 that torch.saves the share to `params_<rank>.pt.tmp`
(hashing it as it goes: the sha256 a manifest needs), fsyncs it and renames it; the thread then
gathers every rank's outcome on the writer's own gloo group (never the training's), rank 0 writes
meta.json last, and `on_done(result)` runs on every rank, also after a failure. The files are
universal.save_elastic's, so load_elastic reads them. One save is in flight at a time: `snapshot`
first waits for the previous write (its buffer is the one it reuses). A process killed during the
write leaves the temp file and no meta.json: the previous committed checkpoint is untouched.

Chosen by measurement (benchmarks/checkpoint_writers.py, ms_B8 161.7 M parameters, bf16 ZeRO-2,
one rank on this project's 2-core CPU machine, steps of ~2.2 s; results/checkpoint_writers.json;
docs/benchmarks.md, "Checkpoints"). The stall (the longest step from the save's on, minus the
median step; a first save, so the buffer is allocated in it) in two runs each:
    this thread at niceness 19                    1.25 / 1.08 s (later saves: checkpoint_bench.py)
    the same thread at niceness 0                 3.9 / 5.8 s: the writer takes a core from the
                                                  step's two OpenMP threads, which then wait
    torch.distributed.checkpoint async_save       1.4 / 2.1 s with a thread (it stages the state
                                                  again, 1.6-2.3 s in the step), 2.3 / 4.3 s with
                                                  its process; .distcp files, not this format
    DeepSpeed 0.19.8's decoupled engine           6.0 / 6.1 s: its next engine.step() waits for the
                                                  write; it also needs the deepspeed launcher's
                                                  CROSS_RANK/CROSS_SIZE, sets the start method to
                                                  spawn process-wide, writes under final names
    a writer process of ours at niceness 19       1.26 / 1.25 s: no better, ~300 MB more per rank
The GIL is no reason for a process: torch.save writes through the hashing file object, whose
hashlib and write calls release it; a Python loop in the main thread (a GPU run's launch thread)
paused 0.08-0.11 s in all, 9 ms at most, during a 1.8 GiB write (`--gil`). Niceness 19 means the
write runs in what the step leaves: 13-56 s for ms_B8 on 2 cores that train without a pause.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from mixvlp_ds.train.universal import (
    Share,
    atomic_save,
    begin_save,
    snapshot_share,
    write_meta,
    write_state,
)


class CheckpointWriteError(RuntimeError):
    """A background write failed on some rank (the message says where and why)."""


@dataclass
class WriteResult:
    directory: Path
    step: int                       # the engine's global_steps at the snapshot
    seconds: float                  # from submit until every rank's share and meta.json are written
    files: list[dict] = field(default_factory=list)   # this rank's {"path", "size", "sha256"}
    error: str | None = None        # None: every rank wrote its share and meta.json is there

    @property
    def ok(self) -> bool:
        return self.error is None


class HostBuffer:
    """One flat fp32 host buffer kept from save to save (pinned when a GPU copies into it)."""

    def __init__(self, pin: bool):
        self.pin, self.tensor = pin, None

    def get(self, numel: int) -> torch.Tensor:
        if self.tensor is None or self.tensor.numel() != numel:
            self.tensor = None  # free the old one first: two would not fit beside a large model
            self.tensor = torch.empty(numel, dtype=torch.float32, pin_memory=self.pin)
        return self.tensor


def _on_gpu() -> bool:
    return torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"


class BackgroundWriter:
    def __init__(self, rank: int = 0, world_size: int = 1, *, nice: int = 19, fsync: bool = True):
        """Collective when world_size > 1: every rank makes its writer at the same point (a gloo
        group of the writers' own, so their collectives never interleave with the training's).
        nice: the writer thread's niceness (Linux: per thread); 19 lets the step's threads go first.
        fsync: the share reaches the disk before it is renamed (off the step, like the rest)."""
        self.rank, self.world_size, self.nice, self.fsync = rank, world_size, nice, fsync
        self.group = dist.new_group(backend="gloo") if world_size > 1 else None
        self.buffer = HostBuffer(pin=_on_gpu())
        self.errors: list[BaseException] = []
        self.last: WriteResult | None = None
        self._failure: BaseException | None = None  # the last write's, until wait() raises it
        self._thread: threading.Thread | None = None

    def snapshot(self, engine) -> Share:
        """Collective: this rank's share in the reused host buffer (waits for a write in flight)."""
        self.wait(raise_errors=False)
        return snapshot_share(engine, self.rank, self.world_size, self.buffer.get)

    def submit(self, share: Share, directory: Path, on_done=None) -> None:
        """Write `share` to directory/elastic in the background: rank 0 writes state.pt now (a few
        KB), every rank its share, rank 0 meta.json once all are written. on_done(WriteResult) runs
        on every rank in the writer thread, after that (also on failure)."""
        if self.busy():
            raise RuntimeError("a checkpoint write is in flight: wait() for it before submitting another")
        directory = Path(directory)
        begin_save(directory, self.rank)
        write_state(share, directory)
        args = (share, directory, on_done, time.perf_counter())
        # not a daemon: a program that ends meanwhile exits once the checkpoint is complete
        self._thread = threading.Thread(target=self._write, args=args, name="checkpoint-writer", daemon=False)
        self._thread.start()

    def _write(self, share: Share, directory: Path, on_done, start: float) -> None:
        try:
            self._write_and_commit(share, directory, start)
        except Exception as e:  # noqa: BLE001 - a collective or the file system: reported, not lost
            self.last = WriteResult(directory, share.meta["global_steps"], time.perf_counter() - start, [],
                                    f"{type(e).__name__}: {e}")
        self._failure = CheckpointWriteError(self.last.error) if self.last.error else None
        if on_done is not None:
            try:
                on_done(self.last)
            except Exception as e:  # noqa: BLE001 - kept for wait() and .errors, not lost in a thread
                self._failure = self._failure or e
        if self._failure is not None:
            self.errors.append(self._failure)

    def _write_and_commit(self, share: Share, directory: Path, start: float) -> None:
        if self.nice:
            try:  # Linux: a thread id names one thread; elsewhere the write runs at the process's priority
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError:
                pass
        files, error = [], None
        try:
            path = directory / "elastic" / share.file
            files = [atomic_save(share.tensors(), path, fsync=self.fsync, digest=True)]
        except Exception as e:  # noqa: BLE001 - every rank learns of it below
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        outcomes = [error]
        if self.group is not None:
            outcomes = [None] * self.world_size
            dist.all_gather_object(outcomes, error, group=self.group)
        failed = [f"rank {r}: {e}" for r, e in enumerate(outcomes) if e]
        error = f"writing {directory / 'elastic'} failed on " + "; ".join(failed) if failed else None
        if error is None and self.rank == 0:
            try:
                write_meta(share.meta, directory)
            except OSError as e:
                error = f"writing {directory / 'elastic' / 'meta.json'}: {e}"
        if self.group is not None:  # every rank's on_done runs once meta.json is written (or not)
            outcomes = [None] * self.world_size
            dist.all_gather_object(outcomes, error, group=self.group)
            error = next((e for e in outcomes if e), None)
        seconds = time.perf_counter() - start
        self.last = WriteResult(directory, share.meta["global_steps"], seconds, files, error)

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self, raise_errors: bool = True) -> WriteResult | None:
        """Block until the write in flight (if any) is done; the last result. Raises that write's
        CheckpointWriteError (or on_done's exception) once, unless raise_errors=False; `errors`
        keeps every failure of this writer."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        failure, self._failure = (self._failure, None) if raise_errors else (None, self._failure)
        if failure is not None:
            raise failure
        return self.last

    def close(self) -> None:
        """Wait for the write in flight and free the buffer."""
        self.wait(raise_errors=False)
        self.buffer.tensor = None
