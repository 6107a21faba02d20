"""What the optimizer steps did, summed over micro-batches and ranks, and where it is reported.

`StepMeter` adds each micro-batch's losses and counts into a small vector ON THE DEVICE (no host
read, no collective) and the batch's composition into a host vector (from the host copy of the
batch, which never waits for the device). A step's sums join the log window when the step is
applied and are dropped when DeepSpeed skips it; `read()`, at log steps only, all-reduces the
window once and brings it to the host. `MetricsSink` (rank 0) writes one JSON line per log step
to <output_dir>/metrics.jsonl, TensorBoard scalars when the package is installed, and feeds the
live progress display (progress.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mixvlp_ds.model.config import ModelConfig

# the device vector (model outputs) and the host vector (batch composition), in this order
DEVICE_FIELDS = ("loss", "L_txt", "L_img", "L_co", "n_txt", "n_img", "n_co", "nonfinite", "micro")
HOST_FIELDS = ("rows", "paired", "repaired", "image_only", "text_only", "padding", "tokens", "steps")


class StepMeter:
    """Sums of the current optimizer step (`window`) and of the applied steps since the last read.

    "tokens" counts what `model` encodes: the real words of every row (attention_mask, [CLS] and
    [SEP] included) for a model that reads text, and all patches of every image row for one that
    reads images; a side the model does not read counts nothing, whatever the tuples hold."""

    def __init__(self, device: torch.device, model: ModelConfig):
        self.device = torch.device(device)
        self.reads_text = model.use_text
        self.num_patches = model.num_patches if model.use_image else 0   # image tokens of one image row
        self._step = torch.zeros(len(DEVICE_FIELDS), dtype=torch.float32, device=self.device)
        self._host_step = np.zeros(len(HOST_FIELDS))
        self._log = torch.zeros_like(self._step)
        self._host_log = np.zeros_like(self._host_step)
        self.institutions: Counter = Counter()   # this rank's share of the data

    def add(self, out: dict, batch: dict) -> None:
        """One micro-batch: `out` of the model (device tensors), `batch` the host batch."""
        loss = out["loss"].detach().float()
        finite = torch.isfinite(loss)
        vals = [loss] + [out[k].detach().float() for k in ("L_txt", "L_img", "L_co")]
        vals = [torch.where(finite, v, 0.0) for v in vals]
        vals += [torch.as_tensor(out[k], dtype=torch.float32, device=self.device)
                 for k in ("n_txt", "n_img", "n_co")]
        vals += [(~finite).float(), torch.ones((), device=self.device)]
        self._step += torch.stack(vals)
        # host copies of the batch: counting them never waits for the device
        has_img, has_txt = np.asarray(batch["has_image"], bool), np.asarray(batch["has_text"], bool)
        pair = np.asarray(batch["pair"], np.float32) > 0.5
        both, padding = has_img & has_txt, ~(has_img | has_txt)
        n = np.count_nonzero
        tokens = n(has_img) * self.num_patches
        if self.reads_text:
            tokens += n(np.asarray(batch["attention_mask"]))
        self._host_step += [n(~padding), n(both & pair), n(both & ~pair), n(has_img & ~has_txt),
                            n(has_txt & ~has_img), n(padding), tokens, 0]
        self.institutions.update(i for i in batch.get("institution", []) if i)

    def end_step(self, applied: bool) -> None:
        """Close the optimizer step: its sums join the log window, or are dropped (skipped step)."""
        if applied:
            self._log += self._step
            self._host_log += self._host_step
            self._host_log[-1] += 1
        self._step.zero_()
        self._host_step[:] = 0

    def step_was_nonfinite(self) -> bool:
        """Did any rank see a non-finite loss in the current step? A collective and a host read:
        call it only after DeepSpeed skipped a step (every rank skips together)."""
        flag = self._step[DEVICE_FIELDS.index("nonfinite")].clone()
        if dist.is_initialized():
            dist.all_reduce(flag)
        return bool(flag > 0)

    def read(self) -> dict:
        """The log window summed over ranks (a collective: every rank calls it), then reset."""
        vec = torch.cat([self._log.double(), torch.from_numpy(self._host_log).to(self.device)])
        if dist.is_initialized():
            dist.all_reduce(vec)
        self._log.zero_()
        self._host_log[:] = 0
        return summarize(dict(zip(DEVICE_FIELDS + HOST_FIELDS, vec.tolist(), strict=True)))


def summarize(t: dict) -> dict:
    """Means per micro-batch (losses, over ranks and micro-batches) and shares of tuple kinds."""
    micro, rows = max(t["micro"], 1.0), max(t["rows"], 1.0)
    return {"loss": t["loss"] / micro, "L_txt": t["L_txt"] / micro, "L_img": t["L_img"] / micro,
            "L_co": t["L_co"] / micro, "samples": t["rows"], "tokens": t["tokens"], "steps": t["steps"],
            "nonfinite_micro_batches": t["nonfinite"], "padding_rows": t["padding"],
            "share_paired": t["paired"] / rows, "share_repaired": t["repaired"] / rows,
            "share_image_only": t["image_only"] / rows, "share_text_only": t["text_only"] / rows}


class MetricsSink:
    """Rank 0's reporting: JSONL always, TensorBoard when available, a progress display."""

    def __init__(self, out_dir: Path, flops_per_sample: float, peak_flops: float, world_size: int,
                 progress=None, tensorboard: bool = True):
        """peak_flops: per device (0: unknown, no MFU); progress: the live display (progress.py)."""
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")  # a resumed run appends; readers keep the last line per step
        self.world_size = world_size
        self.flops_per_sample, self.peak = flops_per_sample, peak_flops
        self.progress = progress
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                self.tb = None
        self._t = time.perf_counter()

    def log(self, step: int, summary: dict, lr: float, extra: dict, institutions: Counter) -> dict:
        """One record for the steps since the last one: `summary` from StepMeter.read(), rates over
        the wall time since the last record, institution shares from rank 0's share of the data."""
        now = time.perf_counter()
        dt, self._t = max(now - self._t, 1e-9), now
        rec = {"step": step, "lr": lr, **summary, "step_time": dt,
               "samples_per_s": summary["samples"] / dt, "tokens_per_s": summary["tokens"] / dt, **extra}
        tflops = self.flops_per_sample * rec["samples_per_s"] / 1e12
        rec["tflops"] = tflops
        rec["mfu"] = tflops * 1e12 / (self.peak * self.world_size) if self.peak else None
        n = sum(institutions.values()) or 1
        rec["institutions"] = {k: round(v / n, 4) for k, v in sorted(institutions.items())}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"train/{k}", v, step)
        if self.progress is not None:
            self.progress.update(rec)
        return rec

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.progress is not None:
            self.progress.close()


def read_metrics(path: str | Path) -> dict[int, dict]:
    """metrics.jsonl as {step: record}; for a resumed run, the last record of each step wins."""
    out = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out[rec["step"]] = rec
    return out
