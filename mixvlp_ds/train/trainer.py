"""One pre-training run as a handful of stateful parts and the loop that drives them, after
torchtitan's trainer.

    trainer = Trainer(run, info, engine, loader)             # the parts, built by pretrain.main
    checkpoints = CheckpointManager(run, info, ds_config, states=trainer)
    checkpoints.resume()                                     # each part's state, back where it was
    trainer.sink, trainer.checkpoints = sink, checkpoints    # reporting (rank 0) and checkpoints
    trainer.fit()                                            # the loop, until train.steps

The parts and who owns their state:
    engine       DeepSpeed: the model, the optimizer (Adam moments), the LR schedule; saved and
                 loaded by the CheckpointManager (DeepSpeed's own files, or elastic/)
    loader       the data pipeline: epoch, tuples delivered per slot, the plan of an elastic resume
    rng          this rank's global RNG streams (dropout): torch, CUDA, numpy, python (RankRNG)
    state        the loop's counters: steps, micro-batches, skipped steps (LoopState, loop.py)
    meter        the metrics of the steps since the last log line (not checkpointed: a resumed run
                 starts a new log window)
    sink         rank 0's MetricsSink (None on the other ranks): a log line every train.log_every steps
    checkpoints  the CheckpointManager: a checkpoint whenever one is due
`Trainer.state_dict()` is everything but the engine: one small file per rank in a checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from mixvlp_ds.data.batch import model_inputs
from mixvlp_ds.train.loop import LoopState, batches_forever
from mixvlp_ds.train.metrics import StepMeter

# what one micro-batch did to the optimizer: a step applied, a step skipped by DeepSpeed, or neither
# (inside a gradient-accumulation window)
StepOutcome = Literal["applied", "skipped", "accumulating"]


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
    def __init__(self, run, info, engine, loader, sink=None, checkpoints=None):
        self.run, self.info, self.engine, self.loader = run, info, engine, loader
        self.sink, self.checkpoints = sink, checkpoints
        self.state = LoopState()
        self.rng = RankRNG()
        self.rng.seed(run.train.seed, info.rank)   # dropout differs per rank from here on
        self.meter = StepMeter(info.device, run.model)

    def state_dict(self) -> dict:
        """This rank's part of a checkpoint, besides the engine's files."""
        return {"data": self.loader.state_dict(), "rng": self.rng.state_dict(),
                "loop": self.state.state_dict(), "world_size": self.info.world_size}

    def load_state_dict(self, states: list[dict]) -> None:
        """Every rank's part of a checkpoint (each saving rank's state_dict(), rank order). The loader
        continues its own position, or finishes the interrupted epochs on this world (data/ledger.py).
        Saved by as many ranks as this run has: this rank takes back its own RNG streams and counters.
        Saved by another world: the counters are rank 0's, and the dropout streams are drawn anew for
        (seed, rank, step), since the old ranks' streams have no counterpart here."""
        self.loader.load_states([sd["data"] for sd in states])
        if states[0]["world_size"] == self.info.world_size:
            own = states[self.info.rank]
            self.rng.load_state_dict(own["rng"])
            self.state = LoopState(**own["loop"])
        else:
            self.state = LoopState(**states[0]["loop"])
            self.rng.seed(self.run.train.seed, self.info.rank, salt=self.state.step)
        self.state.nonfinite_in_row = 0

    def fit(self) -> LoopState:
        """Train from the current step to train.steps. After each applied step: a log line every
        train.log_every steps and at the last one, then a checkpoint when the manager says one is due."""
        t = self.run.train
        record_log = RecordLog(self.run, self.info, self.loader) if t.record_log else None
        batches = batches_forever(self.loader)
        self.engine.train()
        try:
            while self.state.step < t.steps:  # checked before drawing, so the loader's state stays exact
                batch = next(batches)
                if record_log is not None:
                    record_log(batch, self.state)
                if self.train_step(batch) != "applied":
                    continue
                if self.state.step % t.log_every == 0 or self.state.step == t.steps:
                    self.log_metrics()
                if self.checkpoints is not None:
                    self.checkpoints.maybe_save(self.state.step)
        finally:
            batches.close()
            if hasattr(self.loader, "close"):
                self.loader.close()  # stops the loader's worker processes
            if record_log is not None:
                record_log.close()
        return self.state

    def train_step(self, batch: dict) -> StepOutcome:
        """One micro-batch: forward, the meter's device-side sums, backward, engine.step() (DeepSpeed
        applies the optimizer at each gradient-accumulation boundary, or skips the step when the
        gradients are not finite). Nothing here waits for the device, except after a skipped step:
        one host read then says whether a loss was non-finite (loop.py counts it)."""
        engine, meter = self.engine, self.meter
        self.state.micro_batches += 1
        out = engine(model_inputs(batch, engine.device))
        meter.add(out, batch)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(out["loss"])
        engine.step()
        del out
        if not boundary:
            return "accumulating"
        if engine.was_step_applied():
            meter.end_step(applied=True)
            self.state.applied()
            return "applied"
        nonfinite = meter.step_was_nonfinite()
        meter.end_step(applied=False)
        self.state.skipped(nonfinite, self.run.train.max_nonfinite_in_row, bool(engine.fp16_enabled()))
        return "skipped"

    def log_metrics(self) -> None:
        """The log window, read on every rank (a collective, and the only host read of the losses),
        written by rank 0's sink."""
        summary = self.meter.read()
        if self.sink is not None:
            st = self.state
            skipped = {"skipped_nonfinite": st.skipped_nonfinite, "skipped_overflow": st.skipped_overflow}
            self.sink.log(st.step, summary, self.engine.get_lr()[0], skipped, self.meter.institutions)


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
