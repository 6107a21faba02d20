"""Where DeepSpeed 0.19.8 keeps the fp32 master weights and the Adam state of ZeRO-1/2/3, and how
to read and set them per parameter: the engine-specific half of the elastic checkpoints
(train/universal.py holds the format, the save and the load).

The inner optimizer must be torch's Adam/AdamW (the shipped configs' "torch_adam": true) or, with
the optimizer offloaded at ZeRO-2 (zero2_offload.json), DeepSpeed's CPU Adam: both keep
`{"step", "exp_avg", "exp_avg_sq"}` per flat fp32 partition.
"""

from __future__ import annotations

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def zero_stage(engine) -> int:
    return int(engine.zero_optimization_stage())


def flat_partitions(engine) -> list[torch.Tensor]:
    """This rank's flat fp32 master partitions: the tensors the inner optimizer's state is keyed by."""
    opt = engine.optimizer
    if zero_stage(engine) == 3:
        return list(opt.fp32_partitioned_groups_flat)
    if zero_stage(engine) in (1, 2) and hasattr(opt, "single_partition_of_fp32_groups"):
        return list(opt.single_partition_of_fp32_groups)
    # stage 0, and bf16 at stage 1 (DeepSpeed's BF16_Optimizer, another layout), are not covered
    raise ValueError(f"elastic checkpoints need ZeRO stage 2 or 3 (or stage 1 in fp32), not stage "
                     f"{zero_stage(engine)} with {type(opt).__name__}")


def inner_adam(engine) -> torch.optim.Optimizer:
    """torch's Adam/AdamW ("torch_adam": true), or DeepSpeed's CPU Adam of ZeRO-2 with the optimizer
    offloaded (zero2_offload.json): both keep {"step", "exp_avg", "exp_avg_sq"} per flat partition."""
    inner = engine.optimizer.optimizer
    if isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) or is_cpu_adam(inner):
        return inner
    raise ValueError(f"elastic checkpoints need torch's Adam/AdamW ('torch_adam': true in the DeepSpeed "
                     f"config) or DeepSpeed's CPU Adam as the inner optimizer, not {type(inner).__name__}")


def is_cpu_adam(inner) -> bool:
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ImportError:  # pragma: no cover - the op's package is part of deepspeed
        return False
    return isinstance(inner, DeepSpeedCPUAdam)


def step_value(inner, step: int):
    """The Adam step as each optimizer keeps it: torch a float32 scalar tensor on the CPU (not
    capturable / fused), DeepSpeed's CPU Adam a Python int."""
    return step if is_cpu_adam(inner) else torch.tensor(float(step), dtype=torch.float32)


def ensure_adam_state(engine) -> None:
    """Create the Adam state before the first step, as torch's AdamW would at that step.

    torch's Adam initialises `state[p]` lazily in its first step(), and DeepSpeed links each
    parameter's view into it only then (ZeRO-2; ZeRO-3 reads `optimizer.state[flat]` directly),
    so before any step the safe_{get,set}_full_optimizer_state calls fail (ZeRO-2: optim_fragment
    is None; ZeRO-3: KeyError). A state of step 0 and zero moments is exactly what that first step
    creates (`len(state) == 0` is torch's only test), so creating it early changes nothing."""
    inner = inner_adam(engine)
    for flat in flat_partitions(engine):
        state = inner.state[flat]
        if len(state) == 0:
            state["step"] = step_value(inner, 0)
            for key in MOMENTS:
                state[key] = torch.zeros_like(flat, memory_format=torch.preserve_format)
    if zero_stage(engine) in (1, 2):
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

    opt, inner = engine.optimizer, inner_adam(engine)
    for i, flat in enumerate(opt.single_partition_of_fp32_groups):
        lazy_init_hp_params_optimizer_state(opt.bit16_groups[i], flat, inner.state)
    opt._hp_optimizer_states_linked = True  # DeepSpeed's own (partial) link would be redundant now


def adam_step(engine) -> int:
    """The optimizer's step count (every flat partition steps together; 0 before the first step)."""
    inner = inner_adam(engine)
    steps = {float(inner.state[f]["step"]) for f in flat_partitions(engine) if "step" in inner.state[f]}
    if len(steps) > 1:
        raise ValueError(f"the flat partitions disagree on the Adam step: {sorted(steps)}")
    return int(steps.pop()) if steps else 0


def set_full(engine, p: torch.nn.Parameter, value: torch.Tensor, key: str | None) -> None:
    """This rank's slice of the full fp32 weight (key None) or Adam moment `key` of parameter p.

    ZeRO-3 partitions a parameter into world equal pieces, the last one padded; DeepSpeed 0.19.8's
    set_full_hp_param slices the unpadded value, which fails on the last rank whenever the size is
    not a multiple of the world size (a 1-element parameter on 2 ranks), so stage 3 slices here."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if zero_stage(engine) != 3:
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


def set_adam_step(engine, step: int) -> None:
    """torch's Adam bias correction reads state["step"] (a float32 tensor, incremented before use),
    so the next step is step + 1 as in the uninterrupted run."""
    inner = inner_adam(engine)
    for flat in flat_partitions(engine):
        inner.state[flat]["step"] = step_value(inner, step)


def refresh_low_precision(engine) -> None:
    """Copy the fp32 master partitions into the module's (bf16 / fp32) compute copies and gather
    them, as the ZeRO optimizers do at the end of step(): safe_set_full_fp32_param touches the
    master copy only. Collective."""
    opt = engine.optimizer
    if zero_stage(engine) == 3:
        opt.checkpoint_event_prologue()  # release gathered (persistent) params, as step() does
        for i in range(len(opt.fp16_groups)):
            opt._reassign_or_swap_out_partitioned_parameters(i)  # fp32 -> bit16 partition, unflatten
        opt.checkpoint_event_epilogue()  # re-gather the persistent parameters from the new partitions
    else:
        opt.update_lp_params()  # this rank's bit16 partition <- fp32, then all-gather the flat buffer
