"""One pre-training run as a handful of stateful parts, after torchtitan's trainer.

    trainer = Trainer(run, info, engine, loader)     # the parts below, built by pretrain.build
    checkpoints.resume(trainer)                      # each part's state, back where it was
    trainer.fit(on_step)                             # the loop (loop.train) until train.steps

The parts and who owns their state:
    engine   DeepSpeed: the model, the optimizer (Adam moments), the LR schedule; saved and loaded
             by DeepSpeed's own checkpoint calls (the CheckpointManager makes them)
    loader   the data pipeline: epoch, tuples delivered per worker (PretrainLoader.state_dict)
    rng      this rank's global RNG streams (dropout): torch, CUDA, numpy, python (RankRNG)
    state    the loop's counters: steps, micro-batches, skipped steps (LoopState)
    meter    the metrics of the steps since the last log line (not checkpointed: a resumed run
             starts a new log window)
`Trainer.state_dict()` is everything but the engine: one small file per rank in a checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from mixvlp_ds.train.loop import LoopState, train
from mixvlp_ds.train.metrics import StepMeter


class RankRNG:
    """The global RNG streams of this rank: seeded per rank, saved and restored with checkpoints.
    (Masks and sampling draw from the data pipeline's own seeded generators; dropout, inside the
    model, draws from these.)"""

    def seed(self, seed: int, rank: int) -> None:
        torch.manual_seed(seed * 1000 + rank)
        np.random.seed((seed * 1000 + rank) % 2**32)

    def state_dict(self) -> dict:
        st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            st["cuda"] = torch.cuda.get_rng_state()
        return st

    def load_state_dict(self, st: dict) -> None:
        torch.set_rng_state(st["torch"])
        np.random.set_state(st["numpy"])
        random.setstate(st["python"])
        if "cuda" in st and torch.cuda.is_available():
            torch.cuda.set_rng_state(st["cuda"])


class Trainer:
    def __init__(self, run, info, engine, loader):
        self.run, self.info, self.engine, self.loader = run, info, engine, loader
        self.state = LoopState()
        self.rng = RankRNG()
        self.rng.seed(run.train.seed, info.rank)   # dropout differs per rank from here on
        self.meter = StepMeter(info.device, run.model.num_patches)

    def state_dict(self) -> dict:
        """This rank's part of a checkpoint, besides DeepSpeed's engine files."""
        return {"data": self.loader.state_dict(), "rng": self.rng.state_dict(),
                "loop": self.state.state_dict(), "world_size": self.info.world_size}

    def load_state_dict(self, sd: dict) -> None:
        if sd["world_size"] != self.info.world_size:
            raise ValueError(f"the checkpoint was saved by {sd['world_size']} ranks, this run has "
                             f"{self.info.world_size}")
        self.loader.load_state_dict(sd["data"])
        self.rng.load_state_dict(sd["rng"])
        self.state = LoopState(**sd["loop"])
        self.state.nonfinite_in_row = 0

    def fit(self, on_step: Callable[[LoopState], None]) -> LoopState:
        """Train from the current step to train.steps; `on_step(state)` after each applied step."""
        t = self.run.train
        self.state = train(self.engine, self.loader, self.state, self.meter, t.steps,
                           t.max_nonfinite_in_row, on_step)
        return self.state
