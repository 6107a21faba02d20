"""The loop with a real DeepSpeed engine (one CPU process) and a toy model: non-finite losses are
skipped through DeepSpeed's own overflow check (no host read per micro-batch), counted, and stop
the run after too many in a row; metrics stay on the device until read."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixvlp_ds.train.config import TrainConfig
from mixvlp_ds.train.loop import LoopState, NonFiniteLossError, train
from mixvlp_ds.train.metrics import StepMeter


class Toy(nn.Module):
    """loss = mean((W x)^2), made NaN for batches flagged with pair[0] == 7."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, batch):
        loss = self.lin(batch["x"]).pow(2).mean()
        if float(batch["pair"][0]) == 7:
            loss = loss * float("nan")
        zero = loss.new_zeros(())
        return {"loss": loss, "L_txt": loss, "L_img": zero, "L_co": zero, "n_txt": 1, "n_img": 0, "n_co": 0}


def batches(flags):
    for i, f in enumerate(flags):
        g = torch.Generator().manual_seed(i)
        yield {"x": torch.randn(2, 4, generator=g), "pair": torch.tensor([float(f), 1.0]),
               "has_image": torch.tensor([True, True]), "has_text": torch.tensor([True, True]),
               "attention_mask": torch.ones(2, 3, dtype=torch.long)}


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT="29731").items():
        mp.setenv(k, v)
    from mixvlp_ds.train.engine import build_engine, init_distributed

    init_distributed()
    torch.manual_seed(0)
    ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
          "zero_optimization": {"stage": 2}, "steps_per_print": 10**9}
    yield build_engine(Toy(), ds, TrainConfig(warmup_steps=0, steps=100))
    mp.undo()


def test_nonfinite_micro_batch_is_skipped_and_counted(engine):
    logged = []
    meter = StepMeter(engine.device, num_patches=0)
    before = [p.detach().clone() for p in engine.module.parameters()]
    state = train(engine, list(batches([0, 7, 0, 7, 7, 0])), LoopState(), meter, total_steps=3,
                  max_nonfinite_in_row=3, on_step=lambda s: logged.append((s.step, meter.read())))
    assert state.step == 3 and state.skipped_nonfinite == 3 and state.micro_batches == 6
    assert state.skipped_overflow == 0
    assert [s for s, _ in logged] == [1, 2, 3]
    # each record holds its applied step only: one micro-batch, 2 rows, a finite loss
    assert all(r["steps"] == 1 and r["samples"] == 2 and r["nonfinite_micro_batches"] == 0
               and torch.isfinite(torch.tensor(r["loss"])) and r["loss"] > 0 for _, r in logged)
    after = list(engine.module.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_many_nonfinite_in_row_stop_the_run(engine):
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row at step 1"):
        train(engine, list(batches([0, 7, 7, 7, 0])), LoopState(), StepMeter(engine.device, 0),
              total_steps=10, max_nonfinite_in_row=3, on_step=lambda s: None)
