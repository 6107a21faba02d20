"""The training loop: micro-batches through the DeepSpeed engine until `total_steps` optimizer steps.

Per micro-batch: forward, the meter's device-side sums, backward, engine.step(); DeepSpeed applies
the optimizer at each gradient-accumulation boundary. Nothing here waits for the device: the loss
is never read on the host. A step whose gradients are not finite is skipped by DeepSpeed itself
(its overflow check, on every rank together: bf16 and fp16 check the gradients before applying
them, fp32 ZeRO finds the norm invalid); only then does the loop look at the step's losses (one
host read) to count it as a non-finite loss or, in fp16, a loss-scale overflow. Skipped steps do
not count towards `total_steps`; `max_nonfinite_in_row` consecutive ones stop the run with
NonFiniteLossError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from mixvlp_ds.data.batch import model_inputs
from mixvlp_ds.train.metrics import StepMeter


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class LoopState:
    step: int = 0                # optimizer steps applied
    micro_batches: int = 0       # micro-batches consumed (including those of skipped steps)
    skipped_nonfinite: int = 0   # steps skipped: a non-finite loss on some rank
    skipped_overflow: int = 0    # steps skipped: finite loss, overflowing gradients (fp16 loss scale)
    nonfinite_in_row: int = 0

    def state_dict(self) -> dict:
        return asdict(self)


def batches_forever(loader: Iterable):
    """Epoch after epoch of the loader (a PretrainLoader resumes mid-epoch by itself). An epoch may be
    empty for this rank when it was planned by a resume on more ranks (nothing of it left for this
    one: the loader's `plan`); any other empty epoch means the rank has no data."""
    while True:
        planned = getattr(loader, "epoch", None) in getattr(loader, "plan", {})
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty and not planned:
            raise RuntimeError("the data loader yielded no batch in a whole epoch (no shards for this rank?)")


def train(engine, loader: Iterable, state: LoopState, meter: StepMeter, total_steps: int,
          max_nonfinite_in_row: int, on_step: Callable[[LoopState], None],
          on_batch: Callable[[dict, LoopState], None] | None = None) -> LoopState:
    """Run until state.step == total_steps; `on_step(state)` after each applied optimizer step
    (logging through `meter.read()`, checkpoints); `on_batch(batch, state)` as each micro-batch is
    drawn (the record log)."""
    engine.train()
    batches = batches_forever(loader)
    try:
        while state.step < total_steps:  # checked before drawing, so the loader's state stays exact
            batch = next(batches)
            if on_batch is not None:
                on_batch(batch, state)
            state.micro_batches += 1
            out = engine(model_inputs(batch, engine.device))
            meter.add(out, batch)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.backward(out["loss"])
            engine.step()
            del out
            if not boundary:
                continue
            if engine.was_step_applied():
                meter.end_step(applied=True)
                state.step += 1
                state.nonfinite_in_row = 0
                on_step(state)
            else:
                _skipped(state, meter, max_nonfinite_in_row)
    finally:
        batches.close()
        if hasattr(loader, "close"):
            loader.close()  # stops the loader's worker processes
    return state


def _skipped(state: LoopState, meter: StepMeter, max_in_row: int) -> None:
    nonfinite = meter.step_was_nonfinite()
    meter.end_step(applied=False)
    state.nonfinite_in_row += 1
    if nonfinite:
        state.skipped_nonfinite += 1
    else:
        state.skipped_overflow += 1
    if state.nonfinite_in_row >= max_in_row:
        raise NonFiniteLossError(
            f"{state.nonfinite_in_row} non-finite losses in a row at step {state.step} (micro-batch "
            f"{state.micro_batches}; skipped so far: {state.skipped_nonfinite} steps with a non-finite loss, "
            f"{state.skipped_overflow} with only the gradients overflowing); stopping. Lower train.lr, check "
            f"the data, or resume from the last checkpoint")
