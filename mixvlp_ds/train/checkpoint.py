"""The checkpoint manager: owns the checkpoints of one run, after torchtitan's CheckpointManager.

    checkpoints = CheckpointManager(run, info, ds_config, states=trainer)  # and this attempt's S3 hold
    checkpoints.resume()                 # --resume: find, verify and load() a committed checkpoint
    checkpoints.maybe_save(step)         # every train.ckpt_every steps and at the last one
    checkpoints.wait_for_upload()        # the pending upload, also when the run failed
    checkpoints.finish(step)             # the final checkpoint's commit decides the exit status

It decides WHEN (the interval, the end), WHERE (`<output_dir>/checkpoints/step_XXXXXXXX/`, mirrored
to S3 by the attempt's uploader with the commit protocol of checkpoint_store / s3sync) and WHAT of
the stateful parts it was given (`states`, the Trainer): per train.checkpoint_format, `elastic/`
(train/universal.py: fp32 weights, Adam moments, schedule, counters for any layout; the default)
and/or DeepSpeed's `save_checkpoint` of `states.engine`; per rank `rank_<r>.pt` =
`states.state_dict()` (data pipeline, RNG streams, loop counters); from rank 0 the resolved run
config, the filled DeepSpeed config and the tokenizer. With train.async_save the step waits only for
a host copy of `elastic/` (async_save.py); the write, COMMITTED, `latest`, retention and the upload
follow in the background writer's thread, one save in flight at a time. `load()` takes one of two
paths: DeepSpeed's own files when the checkpoint has them and the layout is the one that wrote them;
otherwise `elastic/` (any world size, ZeRO stage or precision; on the same layout it reproduces the
uninterrupted run's losses as well). Either way the parts then take every rank's `rank_<r>.pt`
(`states.load_state_dict`: the loader finishes the interrupted epochs on another world,
data/ledger.py).
Retention keeps the newest train.keep_last committed checkpoints (never one still uploading).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
import yaml

from mixvlp_ds.config import ConfigError, to_dict
from mixvlp_ds.train.async_save import BackgroundWriter
from mixvlp_ds.train.attempt import check_fenced, check_final_commit, open_uploader
from mixvlp_ds.train.checkpoint_store import (
    NoUsableCheckpointError,
    commit_local,
    describe_files,
    fetch_for_resume,
    list_files,
    owner_rank,
    prune_local,
    step_of,
    tag_for,
)
from mixvlp_ds.train.checkpoint_upload import CheckpointUploader
from mixvlp_ds.train.universal import load_elastic, save_elastic, unsupported


def _gather(obj, info, group) -> list:
    """Every rank's `obj`, in rank order: on `group` (the background writer's own) or the default."""
    if info.world_size == 1:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj, group=group)
    return out


def _all_reduce(value: float, op, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


@dataclass(frozen=True)
class Layout:
    """The layout a checkpoint was written by. DeepSpeed's own files load only into the same
    `engine` part (world size, ZeRO stage, precision); the loader states also depend on the workers."""

    world_size: int
    num_workers: int
    zero_stage: int
    precision: str

    @classmethod
    def of(cls, ds_config: dict, world_size: int, num_workers: int) -> Layout:
        precision = ("bf16" if ds_config.get("bf16", {}).get("enabled") is True
                     else "fp16" if ds_config.get("fp16", {}).get("enabled") is True else "fp32")
        stage = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        return cls(world_size, max(num_workers, 1), stage, precision)

    @classmethod
    def of_checkpoint(cls, tag_dir: Path, rank0: dict) -> Layout:
        """rank0: the checkpoint's rank_00000.pt (Trainer.state_dict of rank 0)."""
        ds = json.loads((tag_dir / "ds_config.json").read_text())
        return cls.of(ds, rank0["world_size"], rank0["data"]["num_workers"])

    @property
    def engine(self) -> tuple:
        return self.world_size, self.zero_stage, self.precision

    def differences(self, now: Layout) -> str:
        return ", ".join(f"{k} {getattr(self, k)} (now {getattr(now, k)})" for k in self.__dataclass_fields__
                         if getattr(self, k) != getattr(now, k))


class Stateful(Protocol):
    """What a CheckpointManager saves and loads (the Trainer is one)."""

    engine: Any   # the DeepSpeed engine: DeepSpeed's own checkpoint files, and elastic/

    def state_dict(self) -> dict:
        """This rank's rank_<r>.pt."""

    def load_state_dict(self, states: list[dict]) -> None:
        """Every rank's rank_<r>.pt of a checkpoint, in rank order (of the world that saved it)."""


class CheckpointManager:
    def __init__(self, run, info, ds_config: dict, states: Stateful):
        """With train.ckpt_uri this opens the attempt's hold on S3 first (a collective: preflight
        on every rank, then the lease), so an unusable prefix stops the run before it trains."""
        self.run, self.info, self.ds_config, self.states = run, info, ds_config, states
        self.out_dir = Path(run.train.output_dir)
        self.root = self.out_dir / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploader: CheckpointUploader | None = (
            open_uploader(run, info, self.root, self.log) if run.train.ckpt_uri else None)
        # elastic/ written behind the step (async_save.py: a writer thread at niceness 19, which takes
        # only the CPU the step leaves); a collective on more than one rank
        background = run.train.async_save and self.formats()[1]
        self.writer = BackgroundWriter(info.rank, info.world_size) if background else None

    def log(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------- saving
    def due(self, step: int) -> bool:
        t = self.run.train
        return step % t.ckpt_every == 0 or step == t.steps

    def maybe_save(self, step: int) -> str | None:
        return self.save(step) if self.due(step) else None

    def save(self, step: int) -> str | None:
        """Collective: every rank calls it at the same step. Returns the tag (None: skipped, see
        below). In this order: the previous background write done (or this save skipped, as
        train.upload_busy says), whether to upload, the snapshot of this rank's state, the files,
        the local commit, the upload. With a background writer, the step waits for the snapshot
        and the small files only; elastic/ is written, committed and uploaded behind it."""
        t, tag = self.run.train, tag_for(step)
        # the final checkpoint's upload_timeout counts from now, the wait for a pending upload
        # included: a run whose S3 stopped answering exits within upload_timeout of its last step
        deadline = time.time() + t.upload_timeout if step == t.steps else None
        if self.writer is not None:
            busy = self._while_busy(self.writer.busy(), step)
            if busy == "skip":
                self.log(f"WARNING: the previous checkpoint is still being written; {tag} is skipped "
                         f"(train.upload_busy=skip)")
                return None
            if busy == "wait":
                self.log(f"[checkpoint] waiting for the previous checkpoint's write before saving {tag}")
            self.writer.wait()  # its failure stops the run here, as a failed save in the step would
        upload = self._upload_slot(step, tag)
        snapshot = self.states.state_dict()
        share = self._write(tag, snapshot)
        if share is None:
            self._commit(tag, upload, deadline)
        else:
            self.writer.submit(share, self.root / tag, on_done=lambda result: self._commit(
                tag, upload, deadline, written=result.files, group=self.writer.group))
        return tag

    def _while_busy(self, busy_here: bool, step: int) -> str:
        """"idle", "wait" or "skip": what a save does about the write or upload still in flight on
        some rank, decided by every rank together (train.upload_busy; the final save always waits)."""
        t = self.run.train
        if not _all_reduce(float(busy_here), dist.ReduceOp.MAX, self.info.device) > 0:
            return "idle"
        return "skip" if t.upload_busy == "skip" and step < t.steps else "wait"

    def _upload_slot(self, step: int, tag: str) -> bool:
        """Whether this checkpoint is uploaded, once the pending upload is done or skipped. Stops every
        rank when a newer attempt owns the prefix."""
        uploader = self.uploader
        if uploader is None:
            return False
        check_fenced(uploader, self.info.device)  # a newer attempt owns the prefix: stop here, on every rank
        # bounded uploads, decided together so that all ranks wait, or all skip; the final one is
        # always uploaded (its commit decides the run's exit status)
        busy = self._while_busy(uploader.busy(), step)
        if busy == "skip":
            self.log(f"WARNING: checkpoint {uploader.pending_tag} is still uploading; {tag} is saved "
                     f"locally but NOT uploaded (train.upload_busy=skip)")
            return False
        if busy == "wait":
            self.log(f"[checkpoint] waiting for the upload of {uploader.pending_tag} before saving {tag}")
            uploader.wait()
        return True

    def _write(self, tag: str, snapshot: dict):
        """Every rank writes its files of the checkpoint: DeepSpeed's, its elastic/ share, rank_<r>.pt;
        rank 0 also the run config, the DeepSpeed config and the tokenizer. With a background writer
        the elastic/ share is only copied to host memory here: returns that Share (else None)."""
        info, root, engine = self.info, self.root, self.states.engine
        if info.local_rank == 0 and (root / tag).exists():  # left by a killed run: never mix two runs' files
            shutil.rmtree(root / tag)
        dist.barrier()
        deepspeed_files, elastic = self.formats()
        if deepspeed_files:
            engine.save_checkpoint(str(root), tag=tag, client_state={"step": step_of(tag)}, save_latest=False)
        share = None
        if elastic and self.writer is not None:
            share = self.writer.snapshot(engine)  # the stall: a host copy of this rank's share
        elif elastic:
            save_elastic(engine, root / tag, info.rank, info.world_size)
        (root / tag).mkdir(parents=True, exist_ok=True)
        torch.save(snapshot, root / tag / f"rank_{info.rank:05d}.pt")
        if info.is_main:
            (root / tag / "run_config.yaml").write_text(yaml.safe_dump(to_dict(self.run), sort_keys=False))
            (root / tag / "ds_config.json").write_text(json.dumps(self.ds_config, indent=1))
            shutil.copytree(self.run.tokenizer, root / tag / "tokenizer")
        return share

    def _commit(self, tag: str, upload: bool, deadline: float | None, written: list[dict] = (),
                group=None) -> None:
        """COMMITTED and `latest` on each node, local retention (never of a tag still uploading),
        then the upload. In the step, or in the background writer's thread once every rank's share
        is written (`written`: its entries, hashed as they were written; `group`: the writer's own
        process group, so that these collectives never meet the training's)."""
        info, root, uploader = self.info, self.root, self.uploader
        # every rank hashes the files it wrote, in parallel (the gather is the barrier); the node's
        # local rank 0 writes COMMITTED with those sha256s once this node's copy is complete
        hashed = [dict(e, path=f"elastic/{e['path']}") for e in written]
        own = [p for p in list_files(root / tag) if owner_rank(p) == info.rank
               and p not in {e["path"] for e in hashed} and not p.endswith(".tmp")]
        described = _gather(describe_files(root / tag, own) + hashed, info, group)
        if info.local_rank == 0:
            commit_local(root, tag, info.world_size, known=[e for d in described for e in d])
        # tags still uploading somewhere must survive local retention
        pending = uploader.pending_tag if uploader is not None and uploader.busy() else None
        oldest = min(_gather(step_of(pending) if pending else float("inf"), info, group))
        if info.local_rank == 0:
            protect = {tag_for(int(oldest))} if oldest != float("inf") else set()
            prune_local(root, self.run.train.keep_last, protect)
        if upload:
            uploader.submit(tag, {"world_size": info.world_size}, deadline=deadline)

    def formats(self) -> tuple[bool, bool]:
        """(DeepSpeed's own files, elastic/) that checkpoints get, from train.checkpoint_format; an
        engine that cannot write elastic/ (not ZeRO-2/3 with an Adam universal.py knows) falls back to
        DeepSpeed's files, said once."""
        if not hasattr(self, "_formats"):
            fmt = self.run.train.checkpoint_format
            why = unsupported(self.states.engine) if fmt in ("elastic", "both") else None
            if why:
                self.log(f"WARNING: checkpoints are DeepSpeed's own files, which resume only on this world "
                         f"size and ZeRO stage: {why}")
            self._formats = (fmt in ("deepspeed", "both") or why is not None,
                             fmt in ("elastic", "both") and why is None)
        return self._formats

    def wait_for_upload(self) -> None:
        """Block until the write in flight and the pending upload are done (at the end of a run, or
        on its way out: the checkpoint being written is still committed). A failed write is raised."""
        if self.writer is not None:
            if self.writer.busy():
                self.log("[checkpoint] waiting for the checkpoint being written to finish")
            self.writer.wait()
        if self.uploader is not None and self.uploader.busy():
            self.log(f"[checkpoint] waiting for the upload of {self.uploader.pending_tag} to finish")
            self.uploader.wait()

    def finish(self, step: int) -> None:
        """At the end (a collective): the final checkpoint is committed, or NotCommittedError."""
        self.wait_for_upload()
        if self.writer is not None:
            self.writer.close()  # the write in flight, then its host buffer
        check_final_commit(self.uploader, step, self.root, self.info.device)

    # ---------------------------------------------------------------------------- resuming
    def resume(self) -> bool:
        """--resume (auto | s3:// | a local folder): load the newest intact committed checkpoint
        into the parts. False when there is nothing to resume (auto, nothing committed)."""
        t = self.run.train
        if not t.resume:
            return False
        start = time.perf_counter()
        tag_dir = self.find()
        if tag_dir is None:
            self.log(f"[resume] nothing committed at {t.ckpt_uri} yet: starting from scratch")
            return False
        how = self.load(tag_dir)
        self.log(f"[resume] continuing from {tag_dir} at step {step_of(tag_dir.name)} ({how}; found, "
                 f"verified and loaded in {time.perf_counter() - start:.1f} s)")
        return True

    def load(self, tag_dir: Path) -> str:
        """Load a verified checkpoint into the parts (a collective) by one of two paths. Exact: the
        layout that wrote it (world size, ZeRO stage, precision), DeepSpeed's own files. Elastic:
        another layout, `elastic/`; NoUsableCheckpointError when the checkpoint has none. Then the
        parts take every rank's state. Returns how it loaded, for the log."""
        def rank_state(r: int) -> dict:  # our own small files, checksum-verified
            return torch.load(tag_dir / f"rank_{r:05d}.pt", map_location="cpu", weights_only=False)

        rank0 = rank_state(0)
        saved = Layout.of_checkpoint(tag_dir, rank0)
        now = Layout.of(self.ds_config, self.info.world_size, self.run.data.num_workers)
        self.check_batch_size(tag_dir)
        states = [rank0] + [rank_state(r) for r in range(1, saved.world_size)]
        engine = self.states.engine
        has_deepspeed_files = any(tag_dir.glob("*model_states.pt"))
        if saved.engine == now.engine and has_deepspeed_files:  # they load only into the same layout
            path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load the checkpoint in {tag_dir}")
        elif (tag_dir / "elastic").is_dir():
            load_elastic(engine, tag_dir)
        else:
            raise NoUsableCheckpointError(f"{tag_dir} was saved with {saved.differences(now)}; it holds only "
                                          f"DeepSpeed's own files (train.checkpoint_format=deepspeed), which "
                                          f"load only into the layout that wrote them")
        self.states.load_state_dict(states)
        return "exact" if saved == now else f"elastic: {saved.differences(now)}"

    def check_batch_size(self, tag_dir: Path) -> None:
        old = yaml.safe_load((tag_dir / "run_config.yaml").read_text())["train"]["batch_size"]
        t = self.run.train
        if old != t.batch_size and not t.allow_batch_change:
            raise ConfigError(f"train.batch_size is {t.batch_size}, the checkpoint in {tag_dir} was trained "
                              f"with {old}: the LR schedule counts steps of that batch. Keep "
                              f"train.batch_size={old} (gradient accumulation follows the world size by "
                              f"itself) or set train.allow_batch_change=true")

    def find(self) -> Path | None:
        """Each node's local rank 0 fetches and verifies the checkpoint; all ranks must agree on it. A
        failure there (nothing usable) is raised on every rank, not only on the one that saw it."""
        info, t = self.info, self.run.train
        source = t.ckpt_uri if t.resume == "auto" else t.resume
        dest = self.out_dir / "resume" / f"node{info.node_rank}"
        chosen = dest / "CHOSEN.json"
        if info.local_rank == 0:
            dest.mkdir(parents=True, exist_ok=True)
            try:
                found = fetch_for_resume(source, dest, log=lambda m: print(f"[rank {info.rank}] {m}",
                                                                           file=sys.stderr, flush=True))
                if found is None and t.resume != "auto":
                    raise NoUsableCheckpointError(f"--resume {source}: no committed checkpoint there")
                chosen.write_text(json.dumps({"dir": str(found[0]) if found else None}))
            except Exception as e:  # noqa: BLE001 - handed to every rank of the node below
                chosen.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        dist.barrier()
        picked = json.loads(chosen.read_text())
        if "error" in picked:
            raise NoUsableCheckpointError(f"resume from {source}: {picked['error']}")
        picked = picked["dir"]
        steps = [None] * info.world_size
        dist.all_gather_object(steps, step_of(Path(picked).name) if picked else -1)
        if len(set(steps)) != 1:
            raise RuntimeError(f"ranks chose different checkpoints to resume from: steps {steps}")
        return Path(picked) if picked else None
