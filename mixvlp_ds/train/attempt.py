"""One attempt of a run: its id, its hold on the S3 prefix, its tie to the launcher, and how it ends.

A run may take several attempts (crash, SIGKILL, preemption, `--resume auto`). Exactly one of them
writes to the checkpoint prefix at a time:
  - every attempt has an id (rank 0 draws it, all ranks share it); every manifest a rank uploads
    carries it, and a commit counts only manifests of its own attempt, so a manifest left by a
    killed attempt never completes a newer attempt's checkpoint;
  - at start the attempt checks that it may use the prefix at all (a probe object written, read and
    deleted on every rank: a misspelt bucket or denied access fails the run here, not an hour later),
    and that the prefix and the folder are this run's (`check_ownership`: a fresh run into a prefix
    holding checkpoints, or `--resume auto` with nothing committed into a folder holding a run, is a
    ConfigError), then takes the lease (`_lease.json`); an older attempt still running finds the
    lease taken at its next checkpoint and is fenced off: it uploads and commits nothing more, and
    stops training. Its uploads in flight go to its own key space (`step_X/attempt-<id>/`), which
    the newer attempt's COMMITTED never names, and it cannot replace a COMMITTED marker;
  - a rank started by a launcher (torchrun, deepspeed) exits when that launcher dies, so killing a
    launcher never leaves its ranks training on;
  - the run succeeds only when its final checkpoint is committed: otherwise it stops with
    NotCommittedError (exit status 3), saying what is where.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist

from mixvlp_ds.config import ConfigError
from mixvlp_ds.storage import s3_client
from mixvlp_ds.train.checkpoint_store import tag_for
from mixvlp_ds.train.checkpoint_upload import AttemptRank, CheckpointUploader, UploadPolicy
from mixvlp_ds.train.s3sync import FencedError, PreflightError, S3Checkpoints


class NotCommittedError(RuntimeError):
    """The run trained to its end, but its final checkpoint is not committed to S3."""



def existing_run(out_dir: Path) -> str | None:
    """What in `out_dir` says a run already trained there (None: nothing)."""
    found = [p.name for p in (out_dir / "metrics.jsonl",) if p.is_file()]
    found += [f"{p.name}/" for p in (out_dir / "model",) if p.is_dir() and any(p.iterdir())]  # an export
    found += sorted(p.name for p in (out_dir / "checkpoints").glob("step_*"))[-1:]
    return ", ".join(found) or None

def new_attempt_id(device: torch.device) -> str:
    """A fresh id drawn on rank 0, the same on every rank (a collective)."""
    mine = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    box = [mine if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on some rank (a collective)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


LAUNCHERS = ("torch.distributed.run", "torchrun", "deepspeed.launcher.launch", "deepspeed/launcher/launch")


def started_by_launcher() -> bool:
    """Is this process a rank that torchrun or the deepspeed launcher started (its parent)?"""
    import psutil

    try:
        parent = " ".join(psutil.Process(os.getppid()).cmdline())
    except (psutil.Error, OSError):
        return False
    return any(name in parent for name in LAUNCHERS)


def watch_launcher(log, interval: float = 1.0) -> None:
    """Exit this rank at once when the launcher that started it dies (its parent changes): a
    killed torchrun must not leave ranks training and uploading on their own."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                log(f"[attempt] the launcher (pid {parent}) is gone: this rank exits")
                sys.stderr.flush()
                os._exit(143)

    threading.Thread(target=watch, name="launcher-watchdog", daemon=True).start()


def open_uploader(run, info, root: Path, log) -> CheckpointUploader:
    """This attempt's uploader for train.ckpt_uri: id shared, preflight passed on every rank, lease
    taken (collective). Raises PreflightError naming the URI and the rank."""
    t = run.train
    attempt = new_attempt_id(info.device)
    uploader = CheckpointUploader(root, t.ckpt_uri, AttemptRank(info.rank, info.world_size, attempt),
                                  UploadPolicy.of(t), log=lambda m: print(m, file=sys.stderr, flush=True))
    error = None
    try:
        uploader.preflight(t.preflight_timeout)
    except PreflightError as e:
        error = e
    if any_rank(error is not None, info.device):
        raise error or PreflightError(f"S3 preflight for {t.ckpt_uri} failed on another rank (see its log)")
    check_ownership(run, info, S3Checkpoints(uploader.uri))
    if info.is_main:
        lease = {"attempt": attempt, "started": f"{datetime.now(timezone.utc)}", "host": socket.gethostname(),
                 "pid": os.getpid(), "world_size": info.world_size}
        S3Checkpoints(uploader.uri).write_lease(lease)
        log(f"[attempt] {attempt} holds {t.ckpt_uri}")
    dist.barrier()
    return uploader


def check_ownership(run, info, s3: S3Checkpoints) -> None:
    """A run owns its prefix and its folder (a collective; ConfigError on every rank, exit status 2):
      - a fresh run (no --resume) into a prefix that holds checkpoints would mix with them, and its
        retention would delete the newer ones as "old" (a lease alone is no checkpoint: allowed);
      - --resume auto with nothing committed at the prefix would start from scratch, overwriting
        the checkpoints and appending to the metrics of a run that the output folder holds."""

    t, out_dir = run.train, Path(run.train.output_dir)
    box: list = [None]
    if info.is_main:
        tags, committed = s3.tags(), s3.committed_tags()
        if not t.resume and tags:
            what = (f"committed checkpoints {', '.join(committed[-3:])}" if committed
                    else f"uncommitted uploads {', '.join(tags[-3:])}")
            box[0] = ("error", f"train.ckpt_uri={t.ckpt_uri} already holds a run ({what}); a fresh run there "
                               f"would mix with it and its retention would delete them. Resume that run "
                               f"(--resume auto) or choose another --ckpt-uri prefix")
        elif t.resume == "auto" and not committed:
            box[0] = ("folder", None)
    dist.broadcast_object_list(box, src=0, device=info.device if info.device.type == "cuda" else None)
    if box[0] is None:
        return
    kind, msg = box[0]
    if kind == "folder":
        found = [None] * info.world_size
        dist.all_gather_object(found, existing_run(out_dir) if info.local_rank == 0 else None)
        here = [f for f in found if f]
        if not here:
            return
        msg = (f"--resume auto: nothing is committed at {t.ckpt_uri}, but train.output_dir={out_dir} already "
               f"holds a run ({here[0]}); starting from scratch there would overwrite its checkpoints and "
               f"append to its metrics. Resume it from its local checkpoints (--resume "
               f"{out_dir / 'checkpoints'}), or choose a new train.output_dir")
    raise ConfigError(msg)


def check_fenced(uploader: CheckpointUploader | None, device: torch.device) -> None:
    """At a checkpoint (a collective): stop every rank when some rank's uploads were fenced off."""
    if uploader is not None and any_rank(uploader.fenced is not None, device):
        raise FencedError(uploader.fenced or "a newer attempt of this run took the checkpoint prefix over "
                                             "(another rank saw its lease); this attempt stops")


def check_final_commit(uploader: CheckpointUploader | None, step: int, root: Path,
                       device: torch.device) -> None:
    """After the last upload finished (a collective): the final checkpoint is committed on S3, or
    NotCommittedError says where everything is."""
    if uploader is None:
        return
    tag = tag_for(step)
    if not any_rank(tag not in uploader.committed, device):
        return
    try:  # one quick look (S3 is likely down right now): few retries
        latest = S3Checkpoints(uploader.uri, client=s3_client(max_attempts=2, connect_timeout=2)).latest()
    except Exception as e:  # noqa: BLE001 - the summary says what could not be read
        latest = f"unknown ({type(e).__name__})"
    last = uploader.errors[-1] if uploader.errors else "another rank's upload failed (see its log)"
    raise NotCommittedError(
        f"the final checkpoint {tag} is saved locally in {root / tag} but NOT committed to {uploader.uri}: "
        f"{last}. Committed there: latest = {latest}. Resume from the local copy (--resume {root}) or, "
        f"once S3 works, rerun with --resume auto")
