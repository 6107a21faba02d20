"""The Trainer's loop with a real DeepSpeed engine (one CPU process) and a toy model: steps that
DeepSpeed skips (its own overflow check, no host read per micro-batch) are counted as non-finite
losses or as overflows; many non-finite losses in a row stop the run, overflowing gradients with a
finite loss stop it only where no loss scaler mends them (not in fp16); metrics stay on the device
until a log step."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixvlp_ds.model.config import ModelConfig
from mixvlp_ds.train.config import RunConfig, TrainConfig
from mixvlp_ds.train.loop import LoopState, NonFiniteLossError
from mixvlp_ds.train.metrics import MetricsSink, read_metrics
from mixvlp_ds.train.trainer import Trainer

TEXT_MODEL = ModelConfig.preset("tiny", arch="aiayn-text")   # the meter counts words only
NAN_LOSS, INF_GRAD = 7, 5   # pair[0] flags of a batch: a NaN loss, or a finite loss with infinite gradients


class InfiniteGradient(torch.autograd.Function):
    """The identity forward, infinite gradients backward: a finite loss whose gradients overflow,
    as an fp16 loss scale set too high makes them."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class Toy(nn.Module):
    """loss = mean((W x)^2); NaN or with infinite gradients for the flagged batches."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, batch):
        loss = self.lin(batch["x"]).pow(2).mean()
        flag = float(batch["pair"][0])
        if flag == NAN_LOSS:
            loss = loss * float("nan")
        elif flag == INF_GRAD:
            loss = InfiniteGradient.apply(loss)
        zero = loss.new_zeros(())
        return {"loss": loss, "L_txt": loss, "L_img": zero, "L_co": zero, "n_txt": 1, "n_img": 0, "n_co": 0}


def batches(flags):
    out = []
    for i, f in enumerate(flags):
        g = torch.Generator().manual_seed(i)
        out.append({"x": torch.randn(2, 4, generator=g), "pair": torch.tensor([float(f), 1.0]),
                    "has_image": torch.tensor([True, True]), "has_text": torch.tensor([True, True]),
                    "attention_mask": torch.ones(2, 3, dtype=torch.long)})
    return out


@pytest.fixture(scope="module")
def parts():
    """(engine, info): a ZeRO-2 fp32 engine of the toy model, no gradient accumulation."""
    mp = pytest.MonkeyPatch()
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT="29731").items():
        mp.setenv(k, v)
    from mixvlp_ds.train.engine import build_engine, init_distributed

    info = init_distributed()
    torch.manual_seed(0)
    ds = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
          "zero_optimization": {"stage": 2}, "steps_per_print": 10**9}
    yield build_engine(Toy(), ds, TrainConfig(warmup_steps=0, steps=100)), info
    mp.undo()


def trainer(parts, flags, steps: int, tmp_path=None) -> Trainer:
    """A Trainer over the flagged batches (repeated as epochs), a log line every step into tmp_path."""
    engine, info = parts
    run = RunConfig(model=TEXT_MODEL, train=TrainConfig(steps=steps, max_nonfinite_in_row=3, log_every=1))
    sink = MetricsSink(tmp_path, 0.0, 0.0, 1, tensorboard=False) if tmp_path is not None else None
    return Trainer(run, info, engine, batches(flags), sink=sink)


def test_nonfinite_micro_batch_is_skipped_and_counted(parts, tmp_path):
    engine, _ = parts
    before = [p.detach().clone() for p in engine.module.parameters()]
    t = trainer(parts, [0, NAN_LOSS, 0, NAN_LOSS, NAN_LOSS, 0], steps=3, tmp_path=tmp_path)
    state = t.fit()
    t.sink.close()
    assert state == LoopState(step=3, micro_batches=6, skipped_nonfinite=3, skipped_overflow=0)
    logged = read_metrics(tmp_path / "metrics.jsonl")
    assert sorted(logged) == [1, 2, 3]
    assert [logged[s]["skipped_nonfinite"] for s in (1, 2, 3)] == [0, 1, 3]
    # each record holds its applied step only: one micro-batch, 2 rows, a finite loss
    assert all(r["steps"] == 1 and r["samples"] == 2 and r["nonfinite_micro_batches"] == 0
               and math.isfinite(r["loss"]) and r["loss"] > 0 for r in logged.values())
    after = list(engine.module.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_train_step_says_what_happened_to_the_optimizer_step(parts):
    t = trainer(parts, [], steps=10)
    assert [t.train_step(b) for b in batches([0, NAN_LOSS, INF_GRAD, 0])] == [
        "applied", "skipped", "skipped", "applied"]
    assert t.state == LoopState(step=2, micro_batches=4, skipped_nonfinite=1, skipped_overflow=1)


def test_many_nonfinite_in_row_stop_the_run(parts):
    stop = "3 steps with a non-finite loss or non-finite gradients in a row at step 1"
    with pytest.raises(NonFiniteLossError, match=stop):
        trainer(parts, [0, NAN_LOSS, NAN_LOSS, NAN_LOSS, 0], steps=10).fit()


@pytest.fixture()
def fp16_scaler(parts, monkeypatch):
    """The engine as the trainer sees an fp16 one: DeepSpeed's CPU accelerator trains no fp16, so the
    engine says it is (the skip itself is DeepSpeed's overflow check, the same in every precision)."""
    monkeypatch.setattr(parts[0], "fp16_enabled", lambda: True)


def test_overflowing_gradients_with_a_finite_loss_never_stop_an_fp16_run(parts, fp16_scaler):
    """fp16's loss scaler skips such steps (and lowers the scale) as a matter of course: four in a
    row, more than max_nonfinite_in_row, are counted as overflows and training goes on."""
    t = trainer(parts, [0, INF_GRAD, INF_GRAD, INF_GRAD, INF_GRAD, 0, 0], steps=3)
    assert t.fit() == LoopState(step=3, micro_batches=7, skipped_nonfinite=0, skipped_overflow=4)


def test_nonfinite_gradients_stop_a_run_with_no_loss_scaler(parts):
    """bf16 / fp32: nothing lowers a scale, so steps skipped for infinite gradients count towards the
    stop like non-finite losses (otherwise the run would skip for ever)."""
    with pytest.raises(NonFiniteLossError, match="3 steps with a non-finite loss or non-finite grad"):
        trainer(parts, [0, INF_GRAD, NAN_LOSS, INF_GRAD, 0], steps=10).fit()


def test_in_fp16_a_finite_loss_ends_a_row_of_nonfinite_losses_and_the_message_counts_both(parts, fp16_scaler):
    t = trainer(parts, [NAN_LOSS, NAN_LOSS, INF_GRAD, NAN_LOSS, NAN_LOSS, 0], steps=1)
    assert t.fit() == LoopState(step=1, micro_batches=6, skipped_nonfinite=4, skipped_overflow=1)
    with pytest.raises(NonFiniteLossError) as stop:
        trainer(parts, [INF_GRAD, NAN_LOSS, NAN_LOSS, NAN_LOSS], steps=10).fit()
    assert str(stop.value).startswith(
        "3 non-finite losses in a row at step 0 (micro-batch 4; skipped so far: 3 steps with a non-finite "
        "loss, 1 with only the gradients non-finite); stopping.")
