"""A small, deterministic training loop for the applications' heads and fine-tuning.

Fine-tuning sets here are small (hundreds to a few thousand rows held in memory), so rows are
addressed by index: `loss_fn(rows)` builds and scores the batch of those rows. One AdamW, linear
warm-up then cosine decay, gradient clipping, a seeded row order; a printed line per epoch, and the
epoch reported to the running stage's progress display (mixvlp_ds.stage_progress) when there is one.

    fit([encoder, head], loss_fn, len(rows), FitOptions(epochs=10, batch_size=16, lr=1e-4, name="cls-img"))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from mixvlp_ds import stage_progress


def minibatches(n: int, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """Row index batches covering 0..n-1 once, shuffled when `rng` is given (eval: in order)."""
    order = rng.permutation(n) if rng is not None else np.arange(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of rows of similar length (less padding: CPU time is spent per token).

    Rows are shuffled, cut into pools of `pool` batches, sorted by length inside each pool, batched,
    and the batches shuffled: every row once per epoch, an order that still changes every epoch."""
    order = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(order), pool * batch_size):
        chunk = order[i:i + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[k] for k in rng.permutation(len(batches))]


@dataclass
class FitOptions:
    """How `fit` trains: the optimisation knobs, the batching, the time budget and the log lines."""

    epochs: int                          # passes over the n rows
    batch_size: int                      # rows per optimizer step
    lr: float                            # peak learning rate of AdamW
    weight_decay: float = 0.01           # AdamW's decoupled weight decay, per step times the lr
    warmup: float = 0.1                  # share of all steps warming up linearly, then cosine decay to 0
    seed: int = 0                        # seeds the row order and torch's global RNG (head init, dropout)
    clip: float = 1.0                    # gradient norm clipping (0 = off)
    max_seconds: float | None = None     # wall seconds: stop after the epoch past it (None = no budget)
    lengths: np.ndarray | None = field(default=None, repr=False)  # tokens per row: similar-length batches
    name: str = "train"                  # tag of the log lines and the progress display ("cls-img")
    log: bool = True                     # print a line per epoch (False: silent, e.g. a reference's head)


def fit(modules: Iterable[nn.Module], loss_fn: Callable[[np.ndarray], torch.Tensor], n: int,
        opts: FitOptions) -> dict:
    """Train the parameters of `modules` to minimise `loss_fn` over n rows for `opts.epochs` epochs.

    Returns {"steps", "seconds", "last_loss", "epoch_losses"}. `max_seconds` stops early (the
    result says so with "stopped_early") so that a CPU benchmark keeps its time budget. With
    `lengths` (tokens per row) batches group rows of similar length (`length_buckets`)."""
    epochs, batch_size, lr, name, max_seconds = (opts.epochs, opts.batch_size, opts.lr, opts.name,
                                                 opts.max_seconds)
    modules = list(modules)
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=opts.weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    warm = int(opts.warmup * total)

    def lr_at(step: int) -> float:
        if step < warm:
            return lr * (step + 1) / warm
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    rng = np.random.default_rng(opts.seed)
    torch.manual_seed(opts.seed)
    for m in modules:
        m.train()
    step, t0, epoch_losses, stopped = 0, time.time(), [], False
    for epoch in range(epochs):
        losses = []
        batches = (minibatches(n, batch_size, rng) if opts.lengths is None
                   else length_buckets(np.asarray(opts.lengths), batch_size, rng))
        for rows in batches:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = loss_fn(rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if opts.clip:
                torch.nn.utils.clip_grad_norm_(params, opts.clip)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        epoch_losses.append(float(np.mean(losses)))
        line = f"[{name}] epoch {epoch + 1}/{epochs} loss {epoch_losses[-1]:.4f} ({time.time() - t0:.0f}s)"
        if opts.log:
            print(line)
        stage_progress.report(epoch + 1, epochs, line)
        if max_seconds is not None and time.time() - t0 > max_seconds and epoch + 1 < epochs:
            stopped = True
            if opts.log:
                print(f"[{name}] time budget of {max_seconds:.0f}s reached after {epoch + 1} epochs")
            break
    for m in modules:
        m.eval()
    last = epoch_losses[-1] if epoch_losses else None
    return {"steps": step, "seconds": time.time() - t0, "last_loss": last, "epoch_losses": epoch_losses,
            "stopped_early": stopped}


@torch.no_grad()
def predict(fn: Callable[[np.ndarray], torch.Tensor], n: int, batch_size: int) -> np.ndarray:
    """Concatenate fn(rows) over 0..n-1 in order (eval mode is the caller's job)."""
    return torch.cat([fn(rows).float().cpu() for rows in minibatches(n, batch_size)]).numpy()
