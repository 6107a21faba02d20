"""Live progress on rank 0: a rich table redrawn in place on a terminal, plain lines in logs/CI.

Shows step / total, samples/s, tokens/s, TFLOP/s and MFU, each loss, the realised shares of paired,
re-paired, image-only and text-only tuples, the institution mix, skipped steps and the ETA.
Inside a stage of a longer job (mixvlp_ds.stage_progress: its output goes to the stage's log) each
update also moves that stage's progress bar.
"""

from __future__ import annotations

import sys
import time


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class Progress:
    def __init__(self, total_steps: int, log_every: int = 10, live: bool | None = None, start_step: int = 0):
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total, self.log_every = total_steps, log_every
        self.live_mode = self.console.is_terminal if live is None else live
        self.live = None
        self.start_step, self.t0 = start_step, time.perf_counter()
        if self.live_mode:
            from rich.live import Live

            self.live = Live(console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def _eta(self, step: int) -> str:
        done = step - self.start_step
        if done <= 0:
            return "?"
        return _fmt_eta((time.perf_counter() - self.t0) / done * (self.total - step))

    def update(self, r: dict) -> None:
        from mixvlp_ds import stage_progress

        step = r["step"]
        stage_progress.report(step, self.total, f"step {step}/{self.total} loss {r['loss']:.4f}")
        if self.live is not None:
            self.live.update(self._table(r))
        elif step % self.log_every == 0 or step == self.total:
            mfu = f" mfu {r['mfu']:.1%}" if r.get("mfu") is not None else ""
            print(f"step {step}/{self.total} loss {r['loss']:.4f} (txt {r['L_txt']:.4f} img {r['L_img']:.4f} "
                  f"co {r['L_co']:.4f}) lr {r['lr']:.2e} {r['samples_per_s']:.1f} samples/s "
                  f"{r['tokens_per_s']:.0f} tok/s {r['tflops']:.2f} TFLOP/s{mfu} "
                  f"paired {r['share_paired']:.2f} re-paired {r['share_repaired']:.2f} "
                  f"skipped {r.get('skipped_nonfinite', 0)} "
                  f"eta {self._eta(step)}", file=sys.stderr, flush=True)

    def _table(self, r: dict):
        from rich.table import Table

        t = Table(title=f"pre-training  step {r['step']}/{self.total}  ETA {self._eta(r['step'])}",
                  show_header=False, expand=False)
        t.add_column("what", style="bold")
        t.add_column("value")
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a (CPU)"
        t.add_row("loss", f"{r['loss']:.4f}   L_txt {r['L_txt']:.4f}   L_img {r['L_img']:.4f}   "
                          f"L_co {r['L_co']:.4f}")
        t.add_row("lr", f"{r['lr']:.3e}")
        t.add_row("speed", f"{r['samples_per_s']:.1f} samples/s   {r['tokens_per_s']:.0f} tokens/s   "
                           f"{r['tflops']:.2f} TFLOP/s   MFU {mfu}")
        t.add_row("tuples", f"paired {r['share_paired']:.1%}   re-paired {r['share_repaired']:.1%}   "
                            f"image-only {r['share_image_only']:.1%}   text-only {r['share_text_only']:.1%}")
        inst = "   ".join(f"{k} {v:.1%}" for k, v in r.get("institutions", {}).items()) or "-"
        t.add_row("institutions", inst)
        t.add_row("skipped", f"{r.get('skipped_nonfinite', 0)} steps with a non-finite loss, "
                             f"{r.get('skipped_overflow', 0)} with overflowing gradients")
        return t

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
