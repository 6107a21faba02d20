"""Learning-rate schedule: linear warm-up, then cosine or linear decay (or constant).

    lr(step) = lr * factor(step),  factor rising 0 -> 1 over `warmup` steps, then falling to
    `min_ratio` at `total` steps.

A plain function of the step, wrapped in torch's LambdaLR, so DeepSpeed checkpoints its state and a
resumed run continues on the same curve.
"""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, warmup: int, total: int, decay: str = "cosine", min_ratio: float = 0.0) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if decay == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if decay == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif decay == "linear":
        shape = 1.0 - progress
    else:
        raise ValueError(f"unknown decay {decay!r}; use cosine, linear or constant")
    return min_ratio + (1.0 - min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int, decay: str = "cosine",
                    min_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, decay, min_ratio))
