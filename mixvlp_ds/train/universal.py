"""Elastic checkpoints: the training state in a form any world size and ZeRO stage can load.

`engine.save_checkpoint` writes each rank's flat ZeRO partitions, which only the same number of
ranks (and the same stage) can read back. `save_elastic` writes the same state per parameter, in
full, as plain fp32 tensors:

    <directory>/elastic/params_00000.pt ... params_<N-1>.pt   {name: {"fp32", "exp_avg", "exp_avg_sq"}}
    <directory>/elastic/state.pt     the lr scheduler's state_dict, the optimizer's param-group settings
    <directory>/elastic/meta.json    names, shapes, the share of each file, counters (written last)

The parameters are dealt to the N files by size (largest first, to the lightest file so far), so
each rank writes ~12 bytes x parameters / N (fp32 weight + two fp32 Adam moments), give or take one
parameter: dealing by index (i % N) would give one rank every matrix and the other every bias and
norm, whenever weights and biases alternate, as in a transformer. `load_elastic` reads every file
on every rank and hands each ZeRO partition its slice through DeepSpeed's safe_set_full_* API,
so M ranks at stage 2 or 3 continue where N ranks at stage 2 or 3 stopped, in fp32 or bf16 (the
low-precision module copies are re-derived from the fp32 master weights, as after a step).

A save is a snapshot (`snapshot_share`, collective: this rank's share copied into one host buffer,
a `Share`) and a write (`atomic_save` of the share to a temp name, then renamed; rank 0 writes
meta.json last). `save_elastic` does both in line; train/async_save.py writes the snapshot from
a background thread while training goes on. A share file holds views of one storage; files that
hold one storage per tensor load the same way.

The inner optimizer must be torch's Adam/AdamW or DeepSpeed's CPU Adam (train/zero_state.py says
where each keeps its state). Parameters that do not train (requires_grad=False: no fp32 master
copy) are not saved; they keep the model's values.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mixvlp_ds.train.zero_state import (
    MOMENTS,
    adam_step,
    ensure_adam_state,
    flat_partitions,
    inner_adam,
    refresh_low_precision,
    set_adam_step,
    set_full,
    zero_stage,
)

FORMAT = "mixvlp-elastic-1"
KEYS = ("fp32", *MOMENTS)


def _folder(directory: Path) -> Path:
    return Path(directory) / "elastic"


def _share_file(rank: int) -> str:
    return f"params_{rank:05d}.pt"


def unsupported(engine) -> str | None:
    """Why this engine cannot write elastic checkpoints (None when it can)."""
    try:
        flat_partitions(engine)
        inner_adam(engine)
    except ValueError as e:
        return str(e)
    return None


def deal(numels: list[int], world_size: int) -> list[int]:
    """The writing rank of each parameter: largest first, each to the rank with the fewest elements
    so far (ties: the lower rank, then the earlier parameter), the same answer on every rank."""
    load, owner = [0] * world_size, [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        owner[i] = min(range(world_size), key=lambda r: (load[r], r))
        load[owner[i]] += numels[i]
    return owner


def _trained(engine) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every parameter the optimizer holds, in module order (the same order
    on every rank, which the shares and the collectives rely on)."""
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _shape(p: torch.nn.Parameter) -> list[int]:
    # ZeRO-3 leaves an empty placeholder in p.data; the full shape is ds_shape
    return list(getattr(p, "ds_shape", p.shape))


def _group_settings(engine) -> list[dict]:
    """The param groups' settings (lr, betas, ...), without the tensors: the scheduler's
    load_state_dict restores its counters only, not the lr it last wrote into the groups."""
    return [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]


@dataclass
class Share:
    """This rank's part of an elastic checkpoint, copied to host memory at one step: the parameters
    it owns (`deal`) as views of one flat fp32 buffer, in `layout` order (name, key, offset, shape),
    the checkpoint's meta.json, and on rank 0 the content of state.pt (None on the others)."""

    rank: int
    world_size: int
    buffer: torch.Tensor
    layout: list[tuple[str, str, int, list[int]]]
    meta: dict
    state: dict | None

    @property
    def file(self) -> str:
        return _share_file(self.rank)

    def tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return share_tensors(self.buffer, self.layout)


def share_tensors(buffer: torch.Tensor, layout) -> dict[str, dict[str, torch.Tensor]]:
    """{name: {"fp32", "exp_avg", "exp_avg_sq"}} as views of `buffer`: what a share file holds."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, key, offset, shape in layout:
        out.setdefault(name, {})[key] = buffer[offset:offset + torch.Size(shape).numel()].view(shape)
    return out


def snapshot_share(engine, rank: int, world_size: int,
                   host: Callable[[int], torch.Tensor] | None = None) -> Share:
    """Collective (every rank calls it at the same step). Gathers, for every trained parameter of
    engine.module, the full fp32 master weight and the Adam moments (exp_avg, exp_avg_sq) with
    deepspeed.utils.safe_get_full_fp32_param / safe_get_full_optimizer_state, and copies those of
    the parameters THIS rank owns (`deal`: ~1/world_size of the bytes each) into one flat fp32
    host buffer: `host(numel)` (a reused shared or pinned buffer) or a new CPU tensor. Copies from
    a GPU are non-blocking and complete before it returns: the engine may train on at once, and
    nothing written from the Share reads the engine again."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    ensure_adam_state(engine)
    params = _trained(engine)
    owner = deal([torch.Size(_shape(p)).numel() for _, p in params], world_size)
    layout, numel = [], 0
    for i, (name, p) in enumerate(params):
        if owner[i] == rank:
            for key in KEYS:
                layout.append((name, key, numel, _shape(p)))
                numel += torch.Size(_shape(p)).numel()
    buffer = host(numel) if host is not None else torch.empty(numel, dtype=torch.float32)
    views, from_gpu = share_tensors(buffer, layout), False
    for i, (name, p) in enumerate(params):
        # each gather is a collective: every rank takes part, only the owner keeps the result
        full = {"fp32": safe_get_full_fp32_param(p)}
        full.update({key: safe_get_full_optimizer_state(p, key) for key in MOMENTS})
        if owner[i] == rank:
            for key, value in full.items():
                from_gpu |= value.device.type == "cuda"
                views[name][key].copy_(value.detach().reshape(_shape(p)), non_blocking=True)
    if from_gpu:
        torch.cuda.synchronize()
    state = None
    if rank == 0:  # copies: the next step moves the scheduler and the groups on
        state = copy.deepcopy({"lr_scheduler": _scheduler_state(engine),
                               "param_groups": _group_settings(engine),
                               "loss_scaler": _loss_scaler_state(engine)})
    return Share(rank, world_size, buffer, layout, _meta(engine, params, owner, world_size), state)


def begin_save(directory: Path, rank: int) -> Path:
    """The elastic folder, made on every rank (nodes need not share a file system); rank 0 first
    removes a meta.json there: an older checkpoint in this folder is no longer complete."""
    folder = _folder(directory)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (folder / "meta.json").unlink(missing_ok=True)
    return folder


def write_state(share: Share, directory: Path) -> None:
    """Rank 0: state.pt (the lr scheduler's state_dict, if any, and the param-group settings)."""
    if share.state is not None:
        atomic_save(share.state, _folder(directory) / "state.pt")


def write_meta(meta: dict, directory: Path) -> None:
    """Rank 0, once every share is written: meta.json, whose presence marks a complete checkpoint."""
    folder = _folder(directory)
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / "meta.json")


def save_elastic(engine, directory: Path, rank: int, world_size: int) -> dict:
    """Collective, synchronous: `snapshot_share`, then this rank writes its share to
    directory/elastic/params_<rank:05d>.pt as {name: {"fp32", "exp_avg", "exp_avg_sq"}} (fp32 CPU
    tensors in the parameter's full shape, views of one storage); rank 0 then writes state.pt and,
    last, meta.json: format, parameter names and shapes, dtype, the share of each file,
    world_size, zero stage, bf16/fp16 flags, the Adam step, the engine counters (global_steps,
    global_samples, skipped_steps). Returns the meta dict. async_save.BackgroundWriter writes the
    same files from the same snapshot in a background thread while training goes on."""
    begin_save(directory, rank)
    dist.barrier()
    share = snapshot_share(engine, rank, world_size)
    atomic_save(share.tensors(), _folder(directory) / share.file)
    dist.barrier()  # every share is on disk before the meta says the checkpoint is complete
    if rank == 0:
        write_state(share, directory)
        write_meta(share.meta, directory)
    dist.barrier()
    return share.meta


def _meta(engine, params: list, owner: list[int], world_size: int) -> dict:
    shares = {_share_file(r): [n for i, (n, _) in enumerate(params) if owner[i] == r]
              for r in range(world_size)}
    return {"format": FORMAT, "names": [n for n, _ in params],
            "shapes": {n: _shape(p) for n, p in params}, "dtype": "float32", "keys": list(KEYS),
            "shares": shares, "world_size": world_size, "zero_stage": zero_stage(engine),
            "bf16": bool(engine.bfloat16_enabled()), "fp16": bool(engine.fp16_enabled()),
            "adam_step": adam_step(engine), "global_steps": int(engine.global_steps),
            "global_samples": int(engine.global_samples), "skipped_steps": int(engine.skipped_steps),
            "has_lr_scheduler": engine.lr_scheduler is not None}


def _scheduler_state(engine) -> dict | None:
    return None if engine.lr_scheduler is None else engine.lr_scheduler.state_dict()


class _Digest:
    """A file object that hashes what torch.save writes through it (the zip stream, in order)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def atomic_save(obj, path: Path, fsync: bool = False, digest: bool = False) -> dict:
    """torch.save to `<path>.tmp`, then rename: a process killed meanwhile leaves the temp file,
    never part of a file under the final name (fsync first: the file also outlives a power loss).
    Returns {"path": the file's name, "size", and with digest "sha256"} of the bytes written
    (hashed as they are written: 1.2 s of CPU per 1.9 GB here, spent off the step in a writer)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        out = _Digest(f) if digest else f
        torch.save(obj, out)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    entry = {"path": path.name, "size": path.stat().st_size}
    return entry | ({"sha256": out.sha.hexdigest()} if digest else {})


def read_meta(directory: Path) -> dict:
    """directory/elastic/meta.json, checked for the format (ValueError naming the file)."""
    path = _folder(directory) / "meta.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing (no elastic checkpoint in {directory}, or an incomplete one)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def check_compatible(engine, meta: dict, directory: Path) -> None:
    """The engine's trained parameters must be the checkpoint's, by name and shape, and every share
    file must exist: checked on every rank from the same files before anything is changed, so all
    ranks raise the same ValueError together (nobody is left waiting in a collective)."""
    folder = _folder(directory)
    where = folder / "meta.json"
    have = {n: _shape(p) for n, p in _trained(engine)}
    saved = meta["shapes"]
    missing, extra = sorted(set(saved) - set(have)), sorted(set(have) - set(saved))
    if missing or extra:
        raise ValueError(f"{where}: parameter names differ from the model's: in the checkpoint only "
                         f"{missing[:10]}, in the model only {extra[:10]}")
    for name, shape in saved.items():
        if list(shape) != have[name]:
            raise ValueError(f"{where}: parameter {name} has shape {list(shape)} in the checkpoint, "
                             f"{have[name]} in the model")
    for file in [*meta["shares"], "state.pt"]:
        if not (folder / file).is_file():
            raise ValueError(f"{folder / file}: missing (the checkpoint's meta.json lists it)")


def load_elastic(engine, directory: Path) -> dict:
    """Collective. Loads directory/elastic (written by any world size / stage) into this engine:
    the fp32 master weights (safe_set_full_fp32_param), then the low-precision module copies from
    them (as an optimizer step would), exp_avg / exp_avg_sq (safe_set_full_optimizer_state), the
    Adam step, the param groups' settings (lr, ...), the scheduler state and the engine counters.
    Raises ValueError naming the file and the problem when parameter names or shapes differ or a
    file is missing (checked before the engine is changed, on every rank alike), or when a share
    does not hold what meta.json says (found while loading it: the engine is then half loaded and
    must not train). Returns the meta."""
    meta = read_meta(directory)
    check_compatible(engine, meta, directory)
    folder = _folder(directory)
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    _check_schedule(engine, state, folder / "state.pt")
    ensure_adam_state(engine)
    params = dict(_trained(engine))
    for file, names in meta["shares"].items():
        # one share at a time: a rank holds at most one file's tensors besides its own partitions
        share = torch.load(folder / file, map_location="cpu", weights_only=True, mmap=True)
        _check_share(share, names, meta["shapes"], folder / file)
        for name in names:
            p, saved = params[name], share[name]
            for key in KEYS:  # local copies of this rank's slice only
                set_full(engine, p, saved[key], None if key == "fp32" else key)
    set_adam_step(engine, meta["adam_step"])
    refresh_low_precision(engine)
    _restore_schedule(engine, state)
    engine.global_steps = meta["global_steps"]
    engine.global_samples = meta["global_samples"]
    engine.skipped_steps = meta["skipped_steps"]
    dist.barrier()
    return meta


def _check_share(share: dict, names: list[str], shapes: dict, path: Path) -> None:
    if sorted(share) != sorted(names):
        raise ValueError(f"{path}: holds {len(share)} parameters, meta.json lists {len(names)} for it "
                         f"(first differences: {sorted(set(share) ^ set(names))[:5]})")
    for name in names:
        for key in KEYS:
            t = share[name].get(key)
            if t is None or list(t.shape) != list(shapes[name]):
                got = None if t is None else list(t.shape)
                raise ValueError(f"{path}: {name}[{key}] has shape {got}, meta.json says {shapes[name]}")


def _check_schedule(engine, state: dict, path: Path) -> None:
    n, saved = len(engine.optimizer.param_groups), state["param_groups"]
    if len(saved) != n:
        raise ValueError(f"{path}: {len(saved)} optimizer param groups saved, the engine has {n}")
    if (state["lr_scheduler"] is None) != (engine.lr_scheduler is None):
        said = "no lr scheduler" if state["lr_scheduler"] is None else "an lr scheduler state"
        raise ValueError(f"{path}: holds {said}, the engine has "
                         f"{'one' if engine.lr_scheduler is not None else 'none'}")


def _restore_schedule(engine, state: dict) -> None:
    for group, saved in zip(engine.optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k in group})  # the lr the scheduler last set
    if state["lr_scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    scaler = _loss_scaler(engine)
    if scaler is not None and state.get("loss_scaler"):  # older checkpoints have none: the initial scale
        for key, value in state["loss_scaler"].items():
            setattr(scaler, key, value)


# fp16's dynamic loss scaler: where its scale stands and how many steps since it last moved (a
# resumed fp16 run would otherwise start again from the initial scale and skip steps to find it)
SCALER_KEYS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def _loss_scaler(engine):
    return getattr(engine.optimizer, "loss_scaler", None) if engine.fp16_enabled() else None


def _loss_scaler_state(engine) -> dict | None:
    scaler = _loss_scaler(engine)
    if scaler is None:
        return None
    plain = lambda v: float(v) if isinstance(v, (float, torch.Tensor)) else int(v)  # noqa: E731
    return {k: plain(getattr(scaler, k)) for k in SCALER_KEYS if hasattr(scaler, k)}
