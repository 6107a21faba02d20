"""What one optimizer step did, summed over ranks, and where it is reported (rank 0 only).

`StepStats` turns a model output + batch into one small vector; the loop sums it over the
micro-batches of a step and all-reduces it once per micro-batch (that reduction also tells every
rank, identically, whether the loss was finite). `MetricsSink` writes one JSON line per step to
<output_dir>/metrics.jsonl, TensorBoard scalars when the package is installed, and feeds the live
progress display (progress.py).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

# order of the reduced vector
FIELDS = ("loss", "L_txt", "L_img", "L_co", "n_txt", "n_img", "n_co", "nonfinite",
          "rows", "paired", "repaired", "image_only", "text_only", "tokens", "micro")


def step_vector(out: dict, batch: dict, num_patches: int, device: torch.device) -> torch.Tensor:
    """(len(FIELDS),) float64 on `device`: this rank's losses, counts and batch composition."""
    loss = out["loss"].detach().float()
    finite = bool(torch.isfinite(loss))
    has_img, has_txt = batch["has_image"].bool(), batch["has_text"].bool()
    both = has_img & has_txt
    pair = batch["pair"].float() > 0.5
    v = [loss.item() if finite else 0.0]
    for k in ("L_txt", "L_img", "L_co"):
        x = out.get(k)
        v.append(float(x.detach().float()) if x is not None and finite else 0.0)
    for k in ("n_txt", "n_img", "n_co"):
        x = out.get(k, 0)
        v.append(float(x.item() if isinstance(x, torch.Tensor) else x))
    tokens = int(batch["attention_mask"].sum()) + int(has_img.sum()) * num_patches
    v += [0.0 if finite else 1.0, float(has_img.numel()), float((both & pair).sum()),
          float((both & ~pair).sum()), float((has_img & ~has_txt).sum()),
          float((has_txt & ~has_img).sum()), float(tokens), 1.0]
    return torch.tensor(v, dtype=torch.float64, device=device)


def summarize(total: torch.Tensor, world_size: int) -> dict:
    """Per-step means (losses: over ranks and micro-batches) and realised shares of tuple kinds."""
    t = dict(zip(FIELDS, total.tolist(), strict=True))
    micro = max(t["micro"], 1.0)
    rows = max(t["rows"], 1.0)
    return {"loss": t["loss"] / micro, "L_txt": t["L_txt"] / micro, "L_img": t["L_img"] / micro,
            "L_co": t["L_co"] / micro, "samples": t["rows"], "tokens": t["tokens"],
            "share_paired": t["paired"] / rows, "share_repaired": t["repaired"] / rows,
            "share_image_only": t["image_only"] / rows, "share_text_only": t["text_only"] / rows}


class MetricsSink:
    """Rank 0's reporting: JSONL always, TensorBoard when available, a progress display."""

    def __init__(self, out_dir: Path, total_steps: int, flops_per_sample: float, peak_flops: float,
                 world_size: int, progress=None, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a")  # a resumed run appends; readers keep the last line per step
        self.total_steps, self.world_size = total_steps, world_size
        self.flops_per_sample, self.peak = flops_per_sample, peak_flops
        self.progress = progress
        self.institutions: Counter = Counter()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                self.tb = None
        self._t = time.perf_counter()

    def see_batch(self, batch: dict) -> None:
        """Institution shares, from this (rank 0's) share of the data."""
        self.institutions.update(batch.get("institution", []))

    def log(self, step: int, summary: dict, lr: float, extra: dict) -> dict:
        now = time.perf_counter()
        dt, self._t = max(now - self._t, 1e-9), now
        rec = {"step": step, "lr": lr, **summary, "step_time": dt,
               "samples_per_s": summary["samples"] / dt, "tokens_per_s": summary["tokens"] / dt, **extra}
        tflops = self.flops_per_sample * rec["samples_per_s"] / 1e12
        rec["tflops"] = tflops
        rec["mfu"] = tflops * 1e12 / (self.peak * self.world_size) if self.peak else None
        n = sum(self.institutions.values()) or 1
        rec["institutions"] = {k: round(v / n, 4) for k, v in sorted(self.institutions.items())}
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
