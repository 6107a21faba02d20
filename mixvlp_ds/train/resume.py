"""Saving and restoring everything a run needs to continue exactly: engine, data, RNG, loop counters.

One checkpoint = DeepSpeed's `save_checkpoint` (model, optimizer shards, LR scheduler) plus, per
rank, `rank_<r>.pt` = {data pipeline state, torch/CUDA/numpy/python RNG states, loop counters},
plus (rank 0) the resolved run config, the filled DeepSpeed config and the tokenizer. Restoring all
of it in a fresh process with the same world size reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from mixvlp_ds.config import to_dict
from mixvlp_ds.train.attempt import check_fenced
from mixvlp_ds.train.checkpoint_store import CheckpointUploader, commit_local, prune_local, step_of, tag_for
from mixvlp_ds.train.engine import DistInfo
from mixvlp_ds.train.loop import LoopState


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])


def _all_reduce(value: float, op, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def save_training_state(engine, root: Path, step: int, run, ds_config: dict, tokenizer_dir: str,
                        loader, state: LoopState, info: DistInfo, uploader: CheckpointUploader | None,
                        log=print) -> str:
    """Collective: every rank calls it at the same step. Returns the tag."""
    tag = tag_for(step)
    upload = uploader is not None
    if uploader is not None:
        check_fenced(uploader, info.device)  # a newer attempt owns the prefix: stop here, on every rank
        # bounded uploads, decided together so that all ranks wait, or all skip; the final one is
        # always uploaded (its commit decides the run's exit status)
        busy = _all_reduce(float(uploader.busy()), dist.ReduceOp.MAX, info.device) > 0
        if busy and run.train.upload_busy == "skip" and step < run.train.steps:
            upload = False
            if info.is_main:
                log(f"WARNING: checkpoint {uploader.pending_tag} is still uploading; {tag} is saved locally "
                    f"but NOT uploaded (train.upload_busy=skip)")
        elif busy:
            if info.is_main:
                log(f"[checkpoint] waiting for the upload of {uploader.pending_tag} before saving {tag}")
            uploader.wait()
    if info.local_rank == 0 and (root / tag).exists():  # left by a killed run: never mix two runs' files
        shutil.rmtree(root / tag)
    dist.barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state={"step": step}, save_latest=False)
    torch.save({"data": loader.state_dict(), "rng": rng_state(), "loop": state.state_dict(),
                "world_size": info.world_size}, root / tag / f"rank_{info.rank:05d}.pt")
    if info.is_main:
        (root / tag / "run_config.yaml").write_text(yaml.safe_dump(to_dict(run), sort_keys=False))
        (root / tag / "ds_config.json").write_text(json.dumps(ds_config, indent=1))
        shutil.copytree(tokenizer_dir, root / tag / "tokenizer")
    dist.barrier()
    if info.local_rank == 0:  # this node's copy is complete
        commit_local(root, tag)
    # tags still uploading somewhere must survive local retention
    pending = uploader.pending_tag if uploader is not None and uploader.busy() else None
    oldest = _all_reduce(step_of(pending) if pending else float("inf"), dist.ReduceOp.MIN, info.device)
    if info.local_rank == 0:
        protect = {tag_for(int(oldest))} if oldest != float("inf") else set()
        prune_local(root, run.train.keep_last, protect)
    if upload:
        uploader.submit(tag, {"world_size": info.world_size})
    return tag


def restore_training_state(engine, tag_dir: Path, loader, info: DistInfo) -> LoopState:
    """Load a verified checkpoint directory into the engine, the loader and the RNGs."""
    own = tag_dir / f"rank_{info.rank:05d}.pt"
    if not own.is_file():
        raise FileNotFoundError(f"{own} is missing: the checkpoint was written with another world size "
                                f"(exact resume needs the same number of ranks)")
    extra = torch.load(own, map_location="cpu", weights_only=False)
    if extra["world_size"] != info.world_size:
        raise ValueError(f"{tag_dir} was saved by {extra['world_size']} ranks, "
                         f"this run has {info.world_size}")
    path, _ = engine.load_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {tag_dir}")
    loader.load_state_dict(extra["data"])
    set_rng_state(extra["rng"])
    state = LoopState(**extra["loop"])
    state.nonfinite_in_row = 0
    return state
