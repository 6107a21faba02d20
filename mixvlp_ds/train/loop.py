"""The training loop: micro-batches through the DeepSpeed engine until `total_steps` optimizer steps.

Per micro-batch: forward, one all-reduce of the step vector (metrics.FIELDS), then backward and
engine.step(); DeepSpeed applies the optimizer at each gradient-accumulation boundary. A non-finite
loss on ANY rank (the all-reduce makes every rank agree) skips that micro-batch on all ranks: no
backward, no step, the next micro-batch takes its place; it is counted, and `max_nonfinite_in_row`
consecutive ones stop the run with NonFiniteLossError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch.distributed as dist

from mixvlp_ds.data.batch import to_device
from mixvlp_ds.train.metrics import step_vector


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class LoopState:
    step: int = 0                # optimizer steps done
    micro_batches: int = 0       # micro-batches consumed (including skipped ones)
    skipped_nonfinite: int = 0
    nonfinite_in_row: int = 0

    def state_dict(self) -> dict:
        return asdict(self)


def batches_forever(loader: Iterable):
    """Epoch after epoch of the loader (a PretrainLoader resumes mid-epoch by itself)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the data loader yielded no batch in a whole epoch (no shards for this rank?)")


def train(engine, loader: Iterable, state: LoopState, total_steps: int, max_nonfinite_in_row: int,
          num_patches: int, on_step: Callable[[LoopState, dict], None], on_batch: Callable[[dict], None]):
    """Run until state.step == total_steps; `on_step(state, summed_vector)` after each optimizer step
    (logging, checkpoints), `on_batch(batch)` for every consumed micro-batch (rank-local metrics)."""
    engine.train()
    batches = batches_forever(loader)
    try:
        return _run(engine, batches, state, total_steps, max_nonfinite_in_row, num_patches, on_step, on_batch)
    finally:
        batches.close()  # stops the loader's worker processes


def _run(engine, batches, state, total_steps, max_nonfinite_in_row, num_patches, on_step, on_batch):
    total = None
    while state.step < total_steps:  # checked before drawing, so the loader's state stays exact
        batch = next(batches)
        state.micro_batches += 1
        on_batch(batch)
        out = engine(to_device(batch, engine.device))
        vec = step_vector(out, batch, num_patches, engine.device)
        dist.all_reduce(vec)
        if vec[7] > 0:  # "nonfinite": some rank's loss is NaN/inf
            del out
            state.skipped_nonfinite += 1
            state.nonfinite_in_row += 1
            if state.nonfinite_in_row >= max_nonfinite_in_row:
                raise NonFiniteLossError(
                    f"{state.nonfinite_in_row} non-finite losses in a row at step {state.step} "
                    f"(micro-batch {state.micro_batches}); stopping. Lower train.lr, check the data, or "
                    f"resume from the last checkpoint")
            continue
        state.nonfinite_in_row = 0
        boundary = engine.is_gradient_accumulation_boundary()
        engine.backward(out["loss"])
        engine.step()
        total = vec if total is None else total + vec
        if boundary:
            state.step += 1
            on_step(state, total)
            total = None
    return state
