"""DeepSpeed JSON configs with "auto" values filled from the run config, never silently contradictory.

The files in ds_configs/ decide HOW to train (ZeRO stage, offload, precision, loss scaling); the run
config decides WHAT (batch, learning rate, schedule, clipping). Any value the two share is "auto" (or
absent) in the JSON and filled here; an explicit JSON value that disagrees with the run config is a
ConfigError naming both, e.g.

    ds_configs/zero2.json: train_batch_size=128 contradicts the run config (train.batch_size=64)
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixvlp_ds.config import ConfigError
from mixvlp_ds.train.config import RunConfig

AUTO = "auto"
# DeepSpeed's top-level keys (its config reference, checked against deepspeed 0.19.8's sources). DeepSpeed
# ignores an unknown top-level key silently (a misspelt "zero_optimisation" trains at stage 0), while
# its sections (zero_optimization, bf16, ...) reject unknown keys themselves; so only this level is ours.
KNOWN_KEYS = frozenset("""
    train_batch_size train_micro_batch_size_per_gpu gradient_accumulation_steps optimizer scheduler
    communication_data_type seq_parallel_communication_data_type prescale_gradients gradient_predivide_factor
    gradient_allreduce_op sparse_gradients fp16 bf16 bfloat16 amp torch_autocast gradient_clipping
    zero_optimization aio zero_allow_untested_optimizer zero_force_ds_cpu_optimizer activation_checkpointing
    sparse_attention flops_profiler tensorboard wandb csv_monitor comet comms_logger autotuning elasticity
    data_efficiency curriculum_learning compression_training checkpoint data_types steps_per_print
    wall_clock_breakdown memory_breakdown dump_state pipeline progressive_layer_drop eigenvalue
    quantize_training weight_quantization hybrid_engine compile nebula disable_allgather dataloader_drop_last
    use_data_before_expert_parallelism vocabulary_size log_level managed_gradient_accumulation
    expert_parallel disable_python_gc tensor_parallel timers sequence_parallel_size datastates_ckpt
    graph_harvesting
""".split())
SCHEDULER_KEYS = {"WarmupLR": ("warmup_num_steps", "warmup_max_lr"),
                  "WarmupDecayLR": ("warmup_num_steps", "warmup_max_lr", "total_num_steps"),
                  "WarmupCosineLR": ("warmup_num_steps", "total_num_steps")}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _fill(section: dict, key: str, value: Any, source: str, where: str) -> None:
    """Set section[key] = value when absent or "auto"; otherwise it must agree with `value`."""
    have = section.get(key, AUTO)
    if have == AUTO:
        section[key] = list(value) if isinstance(value, tuple) else value
    elif not _same(have, value):
        raise ConfigError(f"{where}: {key}={have!r} contradicts the run config ({source}={value!r})")


@dataclass(frozen=True)
class Device:
    """The device a DeepSpeed config is filled for: its type, and the half precisions DeepSpeed's
    accelerator trains in there (its CPU accelerator: bf16 yes, fp16 no; fp16 None: on CUDA only)."""

    type: str = "cpu"
    bf16_ok: bool = False
    fp16_ok: bool | None = None


def resolve_precision(ds: dict, run: RunConfig, device: Device, where: str) -> str:
    """Fill bf16/fp16 "enabled" for what `device` supports; returns "bf16" | "fp16" | "fp32"."""
    device_type, bf16_ok = device.type, device.bf16_ok
    want = run.train.precision
    flags = {k: ds.get(k, {}).get("enabled", AUTO) for k in ("bf16", "fp16")}
    if want == "auto":
        # the DS file decides; "auto" in it means bf16 where the accelerator has it, else fp32
        if flags["bf16"] == AUTO:
            flags["bf16"] = bf16_ok and flags["fp16"] is not True
        if flags["fp16"] == AUTO:
            flags["fp16"] = False
    else:
        for k in ("bf16", "fp16"):
            if flags[k] == AUTO:
                flags[k] = want == k
            elif flags[k] != (want == k):
                raise ConfigError(f"{where}: {k}.enabled={flags[k]} contradicts the run config "
                                  f"(train.precision={want!r})")
    if flags["bf16"] and flags["fp16"]:
        raise ConfigError(f"{where}: bf16 and fp16 are both enabled")
    fp16_ok = device_type == "cuda" if device.fp16_ok is None else device.fp16_ok
    if flags["fp16"] and not fp16_ok:
        raise ConfigError(f"{where}: fp16 is enabled, but this {device_type} device has no fp16 training "
                          f"(DeepSpeed's CPU accelerator runs bf16 and fp32 only); use ds_configs/zero2.json "
                          f"(bf16) or ds_configs/cpu.json (fp32)")
    if flags["bf16"] and not bf16_ok:
        raise ConfigError(f"{where}: bf16 is enabled, but this {device_type} device has no bf16; use "
                          f"ds_configs/fp16.json (GPUs before Ampere) or ds_configs/cpu.json (fp32)")
    for k in ("bf16", "fp16"):
        ds.setdefault(k, {})["enabled"] = bool(flags[k])
    return "bf16" if flags["bf16"] else "fp16" if flags["fp16"] else "fp32"


def fill_ds_config(ds: dict, run: RunConfig, world_size: int, device: Device = Device(),
                   where: str = "ds_config") -> dict:
    """A copy of `ds` with every shared value taken from `run`; raises ConfigError on contradictions."""
    ds = copy.deepcopy(ds)
    t = run.train
    check_keys(ds, where)
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (1, 2, 3):
        # the loop skips a step with non-finite gradients through the ZeRO optimizer's overflow
        # check (no host read per micro-batch); without ZeRO nothing would skip it
        raise ConfigError(f"{where}: zero_optimization.stage={stage}; the training loop needs ZeRO "
                          f"stage 1, 2 or 3 (its optimizer skips steps with non-finite gradients)")
    accum = run.accumulation(world_size)
    _fill(ds, "train_micro_batch_size_per_gpu", run.data.batch_size, "data.batch_size", where)
    _fill(ds, "gradient_accumulation_steps", accum,
          f"train.batch_size / (data.batch_size x {world_size} ranks)", where)
    _fill(ds, "train_batch_size", t.batch_size, "train.batch_size", where)
    _fill(ds, "gradient_clipping", t.clip_grad, "train.clip_grad", where)
    opt = ds.setdefault("optimizer", {"type": "AdamW"})
    params = opt.setdefault("params", {})
    for key, value, name in [("lr", t.lr, "train.lr"), ("betas", t.betas, "train.betas"),
                             ("eps", t.eps, "train.eps"),
                             ("weight_decay", t.weight_decay, "train.weight_decay")]:
        _fill(params, key, value, name, f"{where} optimizer.params")
    sched = ds.get("scheduler")
    if sched is not None:  # a DeepSpeed scheduler instead of ours (schedule.py): the same numbers
        known = {"warmup_num_steps": (t.warmup_steps, "train.warmup_steps"),
                 "total_num_steps": (t.steps, "train.steps"), "warmup_max_lr": (t.lr, "train.lr")}
        sp = sched.setdefault("params", {})
        for key in SCHEDULER_KEYS.get(sched.get("type"), ()):
            _fill(sp, key, *known[key], f"{where} scheduler.params")
    resolve_precision(ds, run, device, where)
    ds.setdefault("steps_per_print", 10**9)  # our progress display reports; keep DeepSpeed quiet
    leftovers = [k for k, v in _walk(ds) if v == AUTO]
    if leftovers:
        raise ConfigError(f"{where}: no run-config value to fill {leftovers}; write explicit values")
    check_sections(ds, where)
    return ds


def check_keys(ds: dict, where: str) -> None:
    """Unknown keys are errors naming their dotted path and the closest known key: at the top level
    (DeepSpeed would ignore them), in every section DeepSpeed reads with a pydantic model, recursively
    (DeepSpeed would stop with a pydantic traceback), and in `optimizer` (its type and params)."""
    for key, value in ds.items():
        if key not in KNOWN_KEYS:
            raise ConfigError(f"{where}: unknown top-level key {key!r}{_near(key, KNOWN_KEYS)}; DeepSpeed "
                              f"would ignore it silently. Known keys: {', '.join(sorted(KNOWN_KEYS))}")
        model = section_models().get(key)
        if model is not None:
            if not isinstance(value, dict):
                if key == "zero_optimization" and isinstance(value, bool):
                    raise ConfigError(f"{where}: zero_optimization: write a section, e.g. {{\"stage\": 2}}, "
                                      f"not {json.dumps(value)}")
                raise ConfigError(f"{where}: {key}: expected a section (a JSON object), got {value!r}")
            _check_model_keys(value, model, key, where)
    if "optimizer" in ds:
        check_optimizer(ds, where)


def _near(key: str, known) -> str:
    import difflib

    near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def section_models() -> dict[str, type]:
    """DeepSpeed's pydantic model of each section it validates (deepspeed 0.19.8: runtime/config.py)."""
    from deepspeed.comm.config import CommsLoggerConfig
    from deepspeed.compile.config import CompileConfig
    from deepspeed.monitor.config import CometConfig, CSVConfig, TensorBoardConfig, WandbConfig
    from deepspeed.runtime.config import HybridEngineConfig
    from deepspeed.runtime.precision_config import DeepSpeedBF16Config, DeepSpeedFP16Config
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    return {"zero_optimization": DeepSpeedZeroConfig, "bf16": DeepSpeedBF16Config,
            "bfloat16": DeepSpeedBF16Config, "fp16": DeepSpeedFP16Config, "compile": CompileConfig,
            "hybrid_engine": HybridEngineConfig,
            "tensorboard": TensorBoardConfig, "wandb": WandbConfig, "csv_monitor": CSVConfig,
            "comet": CometConfig, "comms_logger": CommsLoggerConfig}


def _submodel(annotation):
    """The pydantic model inside a field's annotation (X, Optional[X], Union[X, ...]), or None."""
    import typing

    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _check_model_keys(section: dict, model, path: str, where: str) -> None:
    fields = {}
    for name, f in model.model_fields.items():
        fields[name] = f
        for alias in (f.alias, f.validation_alias):
            if isinstance(alias, str):
                fields[alias] = f
    for key, value in section.items():
        if key not in fields:
            raise ConfigError(f"{where}: {path}.{key}: unknown key{_near(key, fields)}; DeepSpeed's {path} "
                              f"section has {', '.join(sorted(fields))}")
        sub = _submodel(fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            _check_model_keys(value, sub, f"{path}.{key}", where)


def check_sections(ds: dict, where: str) -> None:
    """Each section's values, validated by DeepSpeed's own model as deepspeed.initialize will: the
    first error as one ConfigError naming its dotted key (not a pydantic traceback)."""
    from pydantic import ValidationError

    for key, model in section_models().items():
        if not isinstance(ds.get(key), dict):
            continue
        try:
            model(**ds[key])
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in (key, *err["loc"]))
            raise ConfigError(f"{where}: {loc}: {err['msg']} (got {err.get('input')!r})") from None
        except (ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"{where}: {key}: {e}") from None


# the optimizers the project trains with (universal.py's elastic checkpoints know their state):
# DeepSpeed's names, compared case-insensitively as DeepSpeed does
OPTIMIZERS = ("Adam", "AdamW")
OPTIMIZER_KEYS = ("type", "params", "legacy_fusion")
# params DeepSpeed itself takes out before building the optimizer (runtime/engine.py)
DS_OPTIMIZER_PARAMS = ("torch_adam", "adam_w_mode", "fp32_optimizer_states")


def optimizer_class(ds: dict):
    """The class DeepSpeed will build for `ds["optimizer"]` (runtime/engine.py,
    get_optimizer_configuration): torch's with torch_adam, the CPU Adam with an offloaded optimizer,
    else FusedAdam."""
    opt = ds["optimizer"]
    params = opt.get("params") or {}
    adamw = str(opt.get("type", "")).lower() == "adamw" or bool(params.get("adam_w_mode", True))
    if params.get("torch_adam"):
        import torch

        return torch.optim.AdamW if adamw else torch.optim.Adam
    offload = (ds.get("zero_optimization") or {}).get("offload_optimizer") or {}
    if isinstance(offload, dict) and offload.get("device") in ("cpu", "nvme"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam
    from deepspeed.ops.adam import FusedAdam

    return FusedAdam


def check_optimizer(ds: dict, where: str) -> None:
    """optimizer.type one of OPTIMIZERS; optimizer.params the arguments of the class DeepSpeed builds."""
    import inspect

    opt = ds["optimizer"]
    if not isinstance(opt, dict):
        raise ConfigError(f"{where}: optimizer: expected a section (a JSON object), got {opt!r}")
    for key in opt:
        if key not in OPTIMIZER_KEYS:
            raise ConfigError(f"{where}: optimizer.{key}: unknown key{_near(key, OPTIMIZER_KEYS)}; the "
                              f"optimizer section has {', '.join(OPTIMIZER_KEYS)}")
    kind = opt.get("type", "AdamW")
    if not isinstance(kind, str) or kind.lower() not in [o.lower() for o in OPTIMIZERS]:
        raise ConfigError(f"{where}: optimizer.type: {kind!r} is not an optimizer this project trains with"
                          f"{_near(str(kind), OPTIMIZERS)}; use one of {', '.join(OPTIMIZERS)}")
    params = opt.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: optimizer.params: expected a JSON object, got {params!r}")
    cls = optimizer_class(ds)
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "params", "model_params"}
    known = takes | set(DS_OPTIMIZER_PARAMS)
    for key in params:
        if key not in known:
            raise ConfigError(f"{where}: optimizer.params.{key}: unknown parameter{_near(key, known)}; "
                              f"{cls.__module__}.{cls.__name__} (what DeepSpeed builds for this config) "
                              f"takes {', '.join(sorted(known))}")


def _walk(d: Any, prefix: str = ""):
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _walk(v, f"{prefix}{k}.")
    else:
        yield prefix.rstrip("."), d


def load_ds_config(path: str | Path, run: RunConfig, world_size: int, device_type: str = "cpu",
                   bf16_ok: bool = False, fp16_ok: bool | None = None) -> dict:
    from mixvlp_ds.shipped import resolve

    try:
        path = resolve(path, "ds_configs")  # a file, or a shipped name: ds_configs/zero2.json, zero2
        ds = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read DeepSpeed config {path}: {e}") from e
    return fill_ds_config(ds, run, world_size, Device(device_type, bf16_ok, fp16_ok), where=str(path))
