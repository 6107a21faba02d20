"""One pre-training run as a handful of stateful parts, after torchtitan's trainer.

    trainer = Trainer(run, info, engine, loader)     # the parts below, built by pretrain.build
    checkpoints.resume(trainer)                      # each part's state, back where it was
    trainer.fit(on_step)                             # the loop (loop.train) until train.steps

The parts and who owns their state:
    engine   DeepSpeed: the model, the optimizer (Adam moments), the LR schedule; saved and loaded
             by DeepSpeed's own checkpoint calls (the CheckpointManager makes them)
    loader   the data pipeline: epoch, tuples delivered per slot, the plan of an elastic resume
    rng      this rank's global RNG streams (dropout): torch, CUDA, numpy, python (RankRNG)
    state    the loop's counters: steps, micro-batches, skipped steps (LoopState)
    meter    the metrics of the steps since the last log line (not checkpointed: a resumed run
             starts a new log window)
`Trainer.state_dict()` is everything but the engine: one small file per rank in a checkpoint.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mixvlp_ds.train.loop import LoopState, train
from mixvlp_ds.train.metrics import StepMeter


class RankRNG:
    """The global RNG streams of this rank: seeded per rank, saved and restored with checkpoints.
    (Masks and sampling draw from the data pipeline's own seeded generators; dropout, inside the
    model, draws from these.)"""

    def seed(self, seed: int, rank: int, salt: int = 0) -> None:
        """salt: the step of an elastic resume (0 at the start of a run, so old runs keep their seeds)."""
        value = seed * 1000 + rank
        if salt:
            value = int(np.random.SeedSequence([seed, rank, salt]).generate_state(1)[0])
        torch.manual_seed(value)
        np.random.seed(value % 2**32)

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

    def load_state_dict(self, sd: dict, data_states: list[dict] | None = None) -> None:
        """This rank's state from a checkpoint of the same world size. data_states: every rank's loader
        state, needed when the number of loader workers per rank changed."""
        if sd["world_size"] != self.info.world_size:
            raise ValueError(f"the checkpoint was saved by {sd['world_size']} ranks, this run has "
                             f"{self.info.world_size} (load_elastic resumes on another world)")
        if data_states is None:
            self.loader.load_state_dict(sd["data"])
        else:
            self.loader.load_states(data_states)
        self.rng.load_state_dict(sd["rng"])
        self.state = LoopState(**sd["loop"])
        self.state.nonfinite_in_row = 0

    def load_elastic(self, states: list[dict]) -> None:
        """The parts of a checkpoint written by another world (all its ranks' state_dicts, rank
        order): the loader finishes the interrupted epochs on this world (data/ledger.py), the loop
        counters are rank 0's, and the dropout streams are drawn anew for (seed, rank, step): the old
        ranks' streams have no counterpart on a world of another size."""
        self.loader.load_states([sd["data"] for sd in states])
        self.state = LoopState(**states[0]["loop"])
        self.state.nonfinite_in_row = 0
        self.rng.seed(self.run.train.seed, self.info.rank, salt=self.state.step)

    def fit(self, on_step: Callable[[LoopState], None]) -> LoopState:
        """Train from the current step to train.steps; `on_step(state)` after each applied step."""
        t = self.run.train
        record_log = RecordLog(self.run, self.info, self.loader) if t.record_log else None
        try:
            self.state = train(self.engine, self.loader, self.state, self.meter, t.steps,
                               t.max_nonfinite_in_row, on_step, record_log)
        finally:
            if record_log is not None:
                record_log.close()
        return self.state


class RecordLog:
    """train.record_log: which records each micro-batch of this rank held, one JSON line per
    micro-batch in <output_dir>/records/rank_<r>.jsonl: {step (optimizer steps before it), epoch,
    key (image record per row), text_key (report record), pair}. Padding rows are left out. For
    audits of the data guarantee (docs/data.md): a checkpoint at step S holds the lines with
    step < S. Host-side only: keys are strings, `pair` is still on the CPU."""

    def __init__(self, run, info, loader):
        path = Path(run.train.output_dir) / "records" / f"rank_{info.rank:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file, self.loader = path.open("a", buffering=1), loader  # by line: a killed rank keeps them

    def __call__(self, batch: dict, state) -> None:
        rows = [(k, tk, p) for k, tk, p in zip(batch["key"], batch["text_key"], batch["pair"].tolist(),
                                                strict=True) if k or tk]
        self.file.write(json.dumps({"step": state.step, "epoch": self.loader.epoch,
                                    "key": [r[0] for r in rows], "text_key": [r[1] for r in rows],
                                    "pair": [r[2] for r in rows]}) + "\n")

    def close(self) -> None:
        self.file.close()
