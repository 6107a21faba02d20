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

The inner optimizer must be torch's Adam/AdamW (the shipped configs' "torch_adam": true) or, with
the optimizer offloaded at ZeRO-2 (zero2_offload.json), DeepSpeed's CPU Adam: both keep
`{"step", "exp_avg", "exp_avg_sq"}` per flat fp32 partition. Parameters that do
not train (requires_grad=False: no fp32 master copy) are not saved; they keep the model's values.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

FORMAT = "mixvlp-elastic-1"
MOMENTS = ("exp_avg", "exp_avg_sq")
KEYS = ("fp32", *MOMENTS)


def _folder(directory: Path) -> Path:
    return Path(directory) / "elastic"


def _share_file(rank: int) -> str:
    return f"params_{rank:05d}.pt"


def deal(numels: list[int], world_size: int) -> list[int]:
    """The writing rank of each parameter: largest first, each to the rank with the fewest elements
    so far (ties: the lower rank, then the earlier parameter), the same answer on every rank."""
    load, owner = [0] * world_size, [0] * len(numels)
    for i in sorted(range(len(numels)), key=lambda i: (-numels[i], i)):
        owner[i] = min(range(world_size), key=lambda r: (load[r], r))
        load[owner[i]] += numels[i]
    return owner


def _zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def _trained(engine) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of every parameter the optimizer holds, in module order (the same order
    on every rank, which the shares and the collectives rely on)."""
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _shape(p: torch.nn.Parameter) -> list[int]:
    # ZeRO-3 leaves an empty placeholder in p.data; the full shape is ds_shape
    return list(getattr(p, "ds_shape", p.shape))


def _flat_partitions(engine) -> list[torch.Tensor]:
    """This rank's flat fp32 master partitions: the tensors the inner optimizer's state is keyed by."""
    opt = engine.optimizer
    if _zero_stage(engine) == 3:
        return list(opt.fp32_partitioned_groups_flat)
    if _zero_stage(engine) in (1, 2) and hasattr(opt, "single_partition_of_fp32_groups"):
        return list(opt.single_partition_of_fp32_groups)
    # stage 0, and bf16 at stage 1 (DeepSpeed's BF16_Optimizer, another layout), are not covered
    raise ValueError(f"elastic checkpoints need ZeRO stage 2 or 3 (or stage 1 in fp32), not stage "
                     f"{_zero_stage(engine)} with {type(opt).__name__}")


def _inner(engine) -> torch.optim.Optimizer:
    """torch's Adam/AdamW ("torch_adam": true), or DeepSpeed's CPU Adam of ZeRO-2 with the optimizer
    offloaded (zero2_offload.json): both keep {"step", "exp_avg", "exp_avg_sq"} per flat partition."""
    inner = engine.optimizer.optimizer
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) or _is_cpu_adam(inner):
        return inner
    raise ValueError(f"elastic checkpoints need torch's Adam/AdamW ('torch_adam': true in the DeepSpeed "
                     f"config) or DeepSpeed's CPU Adam as the inner optimizer, not {type(inner).__name__}")


def _is_cpu_adam(inner) -> bool:
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ImportError:  # pragma: no cover - the op's package is part of deepspeed
        return False
    return isinstance(inner, DeepSpeedCPUAdam)


def _step_value(inner, step: int):
    """The Adam step as each optimizer keeps it: torch a float32 scalar tensor on the CPU (not
    capturable / fused), DeepSpeed's CPU Adam a Python int."""
    return step if _is_cpu_adam(inner) else torch.tensor(float(step), dtype=torch.float32)


def unsupported(engine) -> str | None:
    """Why this engine cannot write elastic checkpoints (None when it can)."""
    try:
        _flat_partitions(engine)
        _inner(engine)
    except ValueError as e:
        return str(e)
    return None


def _ensure_adam_state(engine) -> None:
    """Create the Adam state before the first step, as torch's AdamW would at that step.

    torch's Adam initialises `state[p]` lazily in its first step(), and DeepSpeed links each
    parameter's view into it only then (ZeRO-2; ZeRO-3 reads `optimizer.state[flat]` directly),
    so before any step the safe_{get,set}_full_optimizer_state calls fail (ZeRO-2: optim_fragment
    is None; ZeRO-3: KeyError). A state of step 0 and zero moments is exactly what that first step
    creates (`len(state) == 0` is torch's only test), so creating it early changes nothing."""
    inner = _inner(engine)
    for flat in _flat_partitions(engine):
        state = inner.state[flat]
        if len(state) == 0:
            state["step"] = _step_value(inner, 0)
            for key in MOMENTS:
                state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    if _zero_stage(engine) in (1, 2):
        _link_optimizer_fragments(engine)


def _link_optimizer_fragments(engine) -> None:
    """Point every ZeRO-1/2 parameter's optimizer-state views at the current Adam state.

    DeepSpeed 0.19.8 links them once, right after the FIRST param group's optimizer step
    (`_optimizer_step(i)` then `_lazy_init_hp_params_optimizer_state()` inside the loop over
    groups), when the later groups' state is still empty: their views stay empty for good and
    safe_get_full_optimizer_state raises "exp_avg not found in optimizer state fragment" for any
    parameter outside group 0 (our biases and norms). Linking again, for every group, is what that
    call does, with the state complete; it makes views only, so the optimizer is unchanged."""
    from deepspeed.utils import lazy_init_hp_params_optimizer_state

    opt, inner = engine.optimizer, _inner(engine)
    for i, flat in enumerate(opt.single_partition_of_fp32_groups):
        lazy_init_hp_params_optimizer_state(opt.bit16_groups[i], flat, inner.state)
    opt._hp_optimizer_states_linked = True  # DeepSpeed's own (partial) link would be redundant now


def _adam_step(engine) -> int:
    """The optimizer's step count (every flat partition steps together; 0 before the first step)."""
    inner = _inner(engine)
    steps = {float(inner.state[f]["step"]) for f in _flat_partitions(engine) if "step" in inner.state[f]}
    if len(steps) > 1:
        raise ValueError(f"the flat partitions disagree on the Adam step: {sorted(steps)}")
    return int(steps.pop()) if steps else 0


def _group_settings(engine) -> list[dict]:
    """The param groups' settings (lr, betas, ...), without the tensors: the scheduler's
    load_state_dict restores its counters only, not the lr it last wrote into the groups."""
    return [{k: v for k, v in g.items() if k != "params"} for g in engine.optimizer.param_groups]


def save_elastic(engine, directory: Path, rank: int, world_size: int) -> dict:
    """Collective (every rank calls it). Gathers, for every trained parameter of engine.module, the
    full fp32 master weight and the Adam moments (exp_avg, exp_avg_sq) with
    deepspeed.utils.safe_get_full_fp32_param / safe_get_full_optimizer_state, and writes THIS
    rank's share (parameters dealt by size, `deal`: each rank writes ~1/world_size of the bytes) to
    directory/elastic/params_<rank:05d>.pt as {name: {"fp32", "exp_avg", "exp_avg_sq"}}, fp32 CPU
    tensors in the parameter's full shape. Rank 0 then writes state.pt (the lr scheduler's
    state_dict, if any, and the param-group settings) and, last, meta.json: format, parameter names
    and shapes, dtype, the share of each file, world_size, zero stage, bf16/fp16 flags, the Adam
    step, the engine counters (global_steps, global_samples, skipped_steps). meta.json appears only
    once every share is written, so its presence marks a complete checkpoint. Returns the meta dict."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    folder = _folder(directory)
    folder.mkdir(parents=True, exist_ok=True)  # on every rank: nodes need not share a file system
    if rank == 0:
        (folder / "meta.json").unlink(missing_ok=True)  # an older checkpoint here is no longer complete
    dist.barrier()
    _ensure_adam_state(engine)
    params = _trained(engine)
    owner = deal([torch.Size(_shape(p)).numel() for _, p in params], world_size)
    mine: dict[str, dict[str, torch.Tensor]] = {}
    for i, (name, p) in enumerate(params):
        # each gather is a collective: every rank takes part, only the owner keeps the result
        full = {"fp32": safe_get_full_fp32_param(p)}
        full.update({key: safe_get_full_optimizer_state(p, key) for key in MOMENTS})
        if owner[i] == rank:
            mine[name] = {k: v.detach().float().cpu().reshape(_shape(p)).clone() for k, v in full.items()}
    _atomic_save(mine, folder / _share_file(rank))
    meta = _meta(engine, params, owner, world_size)
    dist.barrier()  # every share is on disk before the meta says the checkpoint is complete
    if rank == 0:
        _atomic_save({"lr_scheduler": _scheduler_state(engine), "param_groups": _group_settings(engine)},
                     folder / "state.pt")
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder / "meta.json")
    dist.barrier()
    return meta


def _meta(engine, params: list, owner: list[int], world_size: int) -> dict:
    shares = {_share_file(r): [n for i, (n, _) in enumerate(params) if owner[i] == r]
              for r in range(world_size)}
    return {"format": FORMAT, "names": [n for n, _ in params],
            "shapes": {n: _shape(p) for n, p in params}, "dtype": "float32", "keys": list(KEYS),
            "shares": shares, "world_size": world_size, "zero_stage": _zero_stage(engine),
            "bf16": bool(engine.bfloat16_enabled()), "fp16": bool(engine.fp16_enabled()),
            "adam_step": _adam_step(engine), "global_steps": int(engine.global_steps),
            "global_samples": int(engine.global_samples), "skipped_steps": int(engine.skipped_steps),
            "has_lr_scheduler": engine.lr_scheduler is not None}


def _scheduler_state(engine) -> dict | None:
    return None if engine.lr_scheduler is None else engine.lr_scheduler.state_dict()


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    _ensure_adam_state(engine)
    params = dict(_trained(engine))
    for file, names in meta["shares"].items():
        # one share at a time: a rank holds at most one file's tensors besides its own partitions
        share = torch.load(folder / file, map_location="cpu", weights_only=True, mmap=True)
        _check_share(share, names, meta["shapes"], folder / file)
        for name in names:
            p, saved = params[name], share[name]
            for key in KEYS:  # local copies of this rank's slice only
                _set_full(engine, p, saved[key], None if key == "fp32" else key)
    _set_adam_step(engine, meta["adam_step"])
    _refresh_low_precision(engine)
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


def _set_full(engine, p: torch.nn.Parameter, value: torch.Tensor, key: str | None) -> None:
    """This rank's slice of the full fp32 weight (key None) or Adam moment `key` of parameter p.

    ZeRO-3 partitions a parameter into world equal pieces, the last one padded; DeepSpeed 0.19.8's
    set_full_hp_param slices the unpadded value, which fails on the last rank whenever the size is
    not a multiple of the world size (a 1-element parameter on 2 ranks), so stage 3 slices here."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if _zero_stage(engine) != 3:
        if key is None:
            safe_set_full_fp32_param(p, value)
        else:
            safe_set_full_optimizer_state(p, value, key)
        return
    opt = engine.optimizer
    part, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False, optim_state_key=key)
    n, rank = part.numel(), opt._get_param_partition_rank(p)
    piece = value.flatten()[n * rank:n * (rank + 1)]
    part.data.zero_()  # the padding stays zero, as DeepSpeed initialises it
    part.data[:piece.numel()].copy_(piece)


def _set_adam_step(engine, step: int) -> None:
    """torch's Adam bias correction reads state["step"] (a float32 tensor, incremented before use),
    so the next step is step + 1 as in the uninterrupted run."""
    inner = _inner(engine)
    for flat in _flat_partitions(engine):
        inner.state[flat]["step"] = _step_value(inner, step)


def _refresh_low_precision(engine) -> None:
    """Copy the fp32 master partitions into the module's (bf16 / fp32) compute copies and gather
    them, as the ZeRO optimizers do at the end of step(): safe_set_full_fp32_param touches the
    master copy only. Collective."""
    opt = engine.optimizer
    if _zero_stage(engine) == 3:
        opt.checkpoint_event_prologue()  # release gathered (persistent) params, as step() does
        for i in range(len(opt.fp16_groups)):
            opt._reassign_or_swap_out_partitioned_parameters(i)  # fp32 -> bit16 partition, unflatten
        opt.checkpoint_event_epilogue()  # re-gather the persistent parameters from the new partitions
    else:
        opt.update_lp_params()  # this rank's bit16 partition <- fp32, then all-gather the flat buffer


def _restore_schedule(engine, state: dict) -> None:
    for group, saved in zip(engine.optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: v for k, v in saved.items() if k in group})  # the lr the scheduler last set
    if state["lr_scheduler"] is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
