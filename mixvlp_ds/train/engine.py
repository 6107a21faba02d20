"""DeepSpeed set-up: the process group (any launcher, or none), the device, and the engine.

The same program runs under `deepspeed`, `torchrun` and plain `python`: without a launcher the
process is rank 0 of 1. Nothing here changes the environment: `standalone_env()` says what a
process started without a launcher needs (RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, or
DeepSpeed tries MPI discovery; DS_ACCELERATOR=cpu without a GPU) and `cpu_threads()` how many
OpenMP threads a rank gets, and the program applies both (train/pretrain.py). Backend: nccl on
GPUs, gloo on CPU (DeepSpeed's CPU accelerator).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

from mixvlp_ds.train.config import TrainConfig
from mixvlp_ds.train.schedule import build_scheduler


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def standalone_env(environ=os.environ) -> dict[str, str]:
    """The variables to set so that this process can join a process group: rank 0 of 1 when no
    launcher started it, and DeepSpeed's CPU accelerator when there is no GPU (empty: nothing)."""
    env: dict[str, str] = {}
    if "RANK" not in environ:  # plain `python`: one process
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        env["MASTER_ADDR"] = environ.get("MASTER_ADDR", "127.0.0.1")
        env["MASTER_PORT"] = environ.get("MASTER_PORT", str(_free_port()))
    if not torch.cuda.is_available() and "DS_ACCELERATOR" not in environ:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def cpu_threads(local_world: int) -> int:
    """OpenMP threads for one rank on a CPU: the cores shared between the ranks of this node.
    Oversubscribed OpenMP threads spin-wait on each other: measured 60x slower steps for the tiny
    model with 2 ranks x 2 threads on 2 busy cores."""
    return max(1, (os.cpu_count() or 1) // max(1, local_world))


def init_distributed() -> DistInfo:
    """Join (or create) the process group from the environment (see standalone_env); idempotent."""
    if "RANK" not in os.environ:
        raise RuntimeError("RANK is not set: start under a launcher, or apply standalone_env() first")
    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    import deepspeed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "0")) or 0)
    if not local_world:
        local_world = torch.cuda.device_count() if cuda else world
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    # torchrun/deepspeed export GROUP_RANK / NODE_RANK; otherwise contiguous ranks per node
    node_rank = int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", rank // max(1, local_world))))
    return DistInfo(rank, world, local_rank, local_world, node_rank, device)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and embeddings' norms are not decayed (as in MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_engine(model: torch.nn.Module, ds_config: dict, train: TrainConfig):
    """deepspeed.initialize with our schedule unless the DS config names its own scheduler."""
    import deepspeed

    scheduler = None
    if "scheduler" not in ds_config:
        def scheduler(opt):
            return build_scheduler(opt, train.warmup_steps, train.steps, train.decay, train.min_lr_ratio)
    groups = param_groups(model, train.weight_decay)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config,
                                           lr_scheduler=scheduler)
    return engine


# the hyper-parameters a checkpoint's optimizer / LR-schedule state carries: loading it restores
# THEIR values over the run config's (torch's Optimizer.load_state_dict takes the saved param-group
# settings, LambdaLR's the saved base LRs). The schedule's shape (train.warmup_steps, steps, decay,
# min_lr_ratio) is not in that state: it is a function of the run config and follows a change.
CARRIED = ("lr", "betas", "eps", "weight_decay")


def carried_hyperparameters(engine) -> dict:
    """{name: value} of CARRIED as the engine will train with them (after a resume: the checkpoint's)."""
    groups = engine.optimizer.param_groups
    have = {}
    base = getattr(engine.lr_scheduler, "base_lrs", None)   # our LambdaLR; a DeepSpeed scheduler has none
    if base:
        have["lr"] = float(base[0])
    if "betas" in groups[0]:
        have["betas"] = tuple(float(b) for b in groups[0]["betas"])
    if "eps" in groups[0]:
        have["eps"] = float(groups[0]["eps"])
    have["weight_decay"] = max(float(g.get("weight_decay", 0.0)) for g in groups)   # the decayed group's
    return have


def check_resumed_hyperparameters(engine, train: TrainConfig, source: str = "the checkpoint") -> None:
    """After a resume: the optimizer and LR schedule the checkpoint restored carry the run config's
    lr, betas, eps and weight_decay; otherwise the run would train on the checkpoint's values while
    its config (and the run_config.yaml of its new checkpoints) says others: a ConfigError naming
    both values. (Refused, as a changed train.batch_size is.)"""
    import math

    from mixvlp_ds.config import ConfigError

    def same(a, b) -> bool:
        a, b = (a if isinstance(a, tuple) else (a,)), (tuple(b) if isinstance(b, (tuple, list)) else (b,))
        return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-12)
                                        for x, y in zip(a, b, strict=True))

    changed = [(k, v, getattr(train, k)) for k, v in carried_hyperparameters(engine).items()
               if not same(v, getattr(train, k))]
    if changed:
        said = "; ".join(f"train.{k} is {_show(new)}, {source} was trained with {_show(old)}"
                         for k, old, new in changed)
        keep = " ".join(f"train.{k}={_show(old)}" for k, old, _ in changed)
        raise ConfigError(f"{said}: its optimizer and LR-schedule state carry the old value(s), which a "
                          f"resume would keep while the run config says otherwise. Keep {keep} to resume (a "
                          f"checkpoint cannot change them; start a new run, e.g. from its exported model, to "
                          f"train with other values)")


def _show(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(_show(x) for x in v) + "]"
    return f"{v:g}" if isinstance(v, float) else str(v)


def peak_flops(device: torch.device, precision: str, override_tflops: float = 0.0) -> float:
    """Peak FLOP/s of one device for MFU: the config's value, else a table of dense bf16 peaks."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return 0.0  # MFU is not meaningful on CPU
    name = torch.cuda.get_device_name(device)
    table = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}
    peak = next((v for k, v in table.items() if k in name), 0.0)
    return peak if precision != "fp32" else peak / 16  # without tensor-core bf16: a rough scale
