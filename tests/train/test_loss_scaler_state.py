"""fp16's dynamic loss scale travels in elastic/state.pt: a resumed fp16 run goes on at the scale the
interrupted one had reached, not at the initial one. (DeepSpeed's CPU accelerator trains no fp16, so
the engine here is the part of one the elastic code reads: its optimizer's loss scaler.)"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

from mixvlp_ds.train.universal import _loss_scaler_state, _restore_schedule


def engine(fp16: bool):
    scaler = DynamicLossScaler(init_scale=2.0**16, scale_window=1000, min_scale=1, delayed_shift=2,
                               consecutive_hysteresis=False)
    opt = SimpleNamespace(loss_scaler=scaler, param_groups=[{"lr": 1e-4}])
    return SimpleNamespace(optimizer=opt, lr_scheduler=None, fp16_enabled=lambda: fp16)


def test_the_fp16_loss_scale_is_saved_and_restored(monkeypatch):
    import deepspeed.runtime.fp16.loss_scaler as scaler_module

    monkeypatch.setattr(scaler_module.dist, "get_rank", lambda: 0)  # its log lines ask; no process group here
    old = engine(fp16=True)
    old.optimizer.loss_scaler.update_scale(True)    # an overflow: hysteresis first
    old.optimizer.loss_scaler.update_scale(True)    # a second: the scale halves
    for _ in range(7):
        old.optimizer.loss_scaler.update_scale(False)
    saved = _loss_scaler_state(old)
    assert saved["cur_scale"] == 2.0**15 and saved["cur_iter"] == 9 and saved["last_overflow_iter"] == 1
    # state.pt is read with weights_only=True: plain numbers only
    assert all(type(v) in (int, float) for v in saved.values())
    new = engine(fp16=True)
    _restore_schedule(new, {"param_groups": [{"lr": 1e-4}], "lr_scheduler": None, "loss_scaler": saved})
    assert _loss_scaler_state(new) == saved
    torch.testing.assert_close(torch.tensor(new.optimizer.loss_scaler.loss_scale), torch.tensor(2.0**15))


def test_bf16_and_older_checkpoints_leave_the_scaler_alone():
    assert _loss_scaler_state(engine(fp16=False)) is None
    new = engine(fp16=True)
    _restore_schedule(new, {"param_groups": [{"lr": 1e-4}], "lr_scheduler": None})  # written before it
    assert new.optimizer.loss_scaler.cur_scale == 2.0**16
