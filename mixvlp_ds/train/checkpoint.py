"""The checkpoint manager: owns the checkpoints of one run, after torchtitan's CheckpointManager.

    checkpoints = CheckpointManager(run, info, ds_config)   # with train.ckpt_uri: this attempt on S3
    checkpoints.resume(trainer)          # --resume: find, verify and load a committed checkpoint
    checkpoints.maybe_save(trainer)      # every train.ckpt_every steps and at the last one
    checkpoints.wait_for_upload()        # the pending upload, also when the run failed
    checkpoints.finish(trainer)          # the final checkpoint's commit decides the exit status

It decides WHEN (the interval, the end), WHERE (`<output_dir>/checkpoints/step_XXXXXXXX/`, mirrored
to S3 by the attempt's uploader with the commit protocol of checkpoint_store / s3sync) and WHAT: a
checkpoint is DeepSpeed's `save_checkpoint` of the engine (model, optimizer shards, LR schedule),
per rank `rank_<r>.pt` = `trainer.state_dict()` (data pipeline, RNG streams, loop counters), and
from rank 0 the resolved run config, the filled DeepSpeed config and the tokenizer. Restoring all
of it in a fresh process with the same world size reproduces the uninterrupted run's losses.
Retention keeps the newest train.keep_last committed checkpoints (never one still uploading).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from mixvlp_ds.config import to_dict
from mixvlp_ds.train.attempt import check_fenced, check_final_commit, open_uploader
from mixvlp_ds.train.checkpoint_store import (
    CheckpointUploader,
    NoUsableCheckpointError,
    commit_local,
    fetch_for_resume,
    prune_local,
    step_of,
    tag_for,
)


def _all_reduce(value: float, op, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


class CheckpointManager:
    def __init__(self, run, info, ds_config: dict):
        """With train.ckpt_uri this opens the attempt's hold on S3 first (a collective: preflight
        on every rank, then the lease), so an unusable prefix stops the run before it trains."""
        self.run, self.info, self.ds_config = run, info, ds_config
        self.out_dir = Path(run.train.output_dir)
        self.root = self.out_dir / "checkpoints"
        self.root.mkdir(parents=True, exist_ok=True)
        self.uploader: CheckpointUploader | None = (
            open_uploader(run, info, self.root, self.log) if run.train.ckpt_uri else None)

    def log(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, file=sys.stderr, flush=True)

    # ---------------------------------------------------------------------------- saving
    def due(self, step: int) -> bool:
        t = self.run.train
        return step % t.ckpt_every == 0 or step == t.steps

    def maybe_save(self, trainer) -> str | None:
        return self.save(trainer) if self.due(trainer.state.step) else None

    def save(self, trainer) -> str:
        """Collective: every rank calls it at the same step. Returns the tag."""
        info, t, step = self.info, self.run.train, trainer.state.step
        tag, root, uploader = tag_for(step), self.root, self.uploader
        upload = uploader is not None
        if uploader is not None:
            check_fenced(uploader, info.device)  # a newer attempt owns the prefix: stop here, on every rank
            # bounded uploads, decided together so that all ranks wait, or all skip; the final one is
            # always uploaded (its commit decides the run's exit status)
            busy = _all_reduce(float(uploader.busy()), dist.ReduceOp.MAX, info.device) > 0
            if busy and t.upload_busy == "skip" and step < t.steps:
                upload = False
                self.log(f"WARNING: checkpoint {uploader.pending_tag} is still uploading; {tag} is saved "
                         f"locally but NOT uploaded (train.upload_busy=skip)")
            elif busy:
                self.log(f"[checkpoint] waiting for the upload of {uploader.pending_tag} before saving {tag}")
                uploader.wait()
        if info.local_rank == 0 and (root / tag).exists():  # left by a killed run: never mix two runs' files
            shutil.rmtree(root / tag)
        dist.barrier()
        trainer.engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
        torch.save(trainer.state_dict(), root / tag / f"rank_{info.rank:05d}.pt")
        if info.is_main:
            (root / tag / "run_config.yaml").write_text(yaml.safe_dump(to_dict(self.run), sort_keys=False))
            (root / tag / "ds_config.json").write_text(json.dumps(self.ds_config, indent=1))
            shutil.copytree(self.run.tokenizer, root / tag / "tokenizer")
        dist.barrier()
        if info.local_rank == 0:  # this node's copy is complete
            commit_local(root, tag)
        # tags still uploading somewhere must survive local retention
        pending = uploader.pending_tag if uploader is not None and uploader.busy() else None
        oldest = _all_reduce(step_of(pending) if pending else float("inf"), dist.ReduceOp.MIN, info.device)
        if info.local_rank == 0:
            protect = {tag_for(int(oldest))} if oldest != float("inf") else set()
            prune_local(root, t.keep_last, protect)
        if upload:
            uploader.submit(tag, {"world_size": info.world_size})
        return tag

    def wait_for_upload(self) -> None:
        """Block until the pending upload is done (at the end of a run, or on its way out)."""
        if self.uploader is not None and self.uploader.busy():
            self.log(f"[checkpoint] waiting for the upload of {self.uploader.pending_tag} to finish")
            self.uploader.wait()

    def finish(self, trainer) -> None:
        """At the end (a collective): the final checkpoint is committed, or NotCommittedError."""
        self.wait_for_upload()
        check_final_commit(self.uploader, trainer.state.step, self.root, self.info.device)

    # ---------------------------------------------------------------------------- resuming
    def resume(self, trainer) -> bool:
        """--resume (auto | s3:// | a local folder): load the newest intact committed checkpoint
        into the trainer's parts. False when there is nothing to resume (auto, nothing committed)."""
        t = self.run.train
        if not t.resume:
            return False
        tag_dir = self.find()
        if tag_dir is None:
            self.log(f"[resume] nothing committed at {t.ckpt_uri} yet: starting from scratch")
            return False
        own = tag_dir / f"rank_{self.info.rank:05d}.pt"
        if not own.is_file():
            raise FileNotFoundError(f"{own} is missing: the checkpoint was written with another world size "
                                    f"(exact resume needs the same number of ranks)")
        state = torch.load(own, map_location="cpu", weights_only=False)  # our own file, checksum-verified
        path, _ = trainer.engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {tag_dir}")
        trainer.load_state_dict(state)
        self.log(f"[resume] continuing from {tag_dir} at step {trainer.state.step}")
        return True

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
