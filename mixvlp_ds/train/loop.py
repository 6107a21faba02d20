"""The loop's state: its counters (`LoopState`, checkpointed), how a skipped step is counted, and the
endless stream of batches. The loop itself is `Trainer.fit` / `Trainer.train_step` (trainer.py).

A step whose gradients are not finite is skipped by DeepSpeed itself (its overflow check, on every
rank together: bf16 and fp16 check the gradients before applying them, fp32 ZeRO finds the norm
invalid); only then does the trainer look at the step's losses (one host read) and count the step:
  - a non-finite loss on some rank (`skipped_nonfinite`): `max_nonfinite_in_row` of them in a row
    stop the run with NonFiniteLossError;
  - a finite loss whose gradients overflowed (`skipped_overflow`): in fp16 this is DeepSpeed's loss
    scaler at work (it halves the scale and goes on; its dynamic scaler stops the run itself when
    the gradients still overflow at its minimum scale), so there it never stops the run and it ends
    a row of non-finite losses; in bf16 and fp32 no scaler lowers anything, so such a step counts
    towards the row like a non-finite loss (a run would otherwise skip forever).
Skipped steps do not count towards train.steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class LoopState:
    step: int = 0                # optimizer steps applied
    micro_batches: int = 0       # micro-batches consumed (including those of skipped steps)
    skipped_nonfinite: int = 0   # steps skipped: a non-finite loss on some rank
    skipped_overflow: int = 0    # steps skipped: finite loss, overflowing gradients (fp16 loss scale)
    nonfinite_in_row: int = 0    # skipped steps in a row that no loss scaler can mend (see the module doc)

    def state_dict(self) -> dict:
        return asdict(self)

    def applied(self) -> None:
        self.step += 1
        self.nonfinite_in_row = 0

    def skipped(self, nonfinite: bool, max_in_row: int, loss_scaled: bool) -> None:
        """Count a step DeepSpeed skipped: `nonfinite` when a loss was not finite, else only the
        gradients were; `loss_scaled` when fp16's loss scaler handles overflowing gradients.
        NonFiniteLossError at `max_in_row` skipped steps in a row that no scaler mends."""
        if nonfinite:
            self.skipped_nonfinite += 1
        else:
            self.skipped_overflow += 1
        if not nonfinite and loss_scaled:
            self.nonfinite_in_row = 0
            return
        self.nonfinite_in_row += 1
        if self.nonfinite_in_row >= max_in_row:
            what = ("non-finite losses" if loss_scaled
                    else "steps with a non-finite loss or non-finite gradients")
            raise NonFiniteLossError(
                f"{self.nonfinite_in_row} {what} in a row at step {self.step} (micro-batch "
                f"{self.micro_batches}; skipped so far: {self.skipped_nonfinite} steps with a non-finite "
                f"loss, {self.skipped_overflow} with only the gradients non-finite); stopping. Lower "
                f"train.lr, check the data, or resume from the last checkpoint")

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
