"""Checkpoint cost at three model sizes: bytes on disk, the step stall, the write, the load.

    python benchmarks/checkpoint_bench.py                        # tiny, ms_b8, large
    python benchmarks/checkpoint_bench.py --sizes ms_b8          # rows run separately, merged into --out
    python benchmarks/checkpoint_bench.py --sizes ms_b8 --micro-batch 64    # on CUDA (gpu_suite.sh)

Sizes: tiny = configs/tiny_cpu.yaml; ms_b8 = configs/uwox_ms_b8.yaml (BERT-base, 161.7 M parameters
at full input size); large = ms_b8 at BERT-large width as overrides (hidden 1024, 24 layers, 16
heads, intermediate 4096: 417.5 M with the decoder and heads). One process, ds_configs/zero2.json
(bf16 ZeRO-2) through load_ds_config. A checkpoint's cost depends on the parameters, not on the
inputs, so on a CPU the steps run on short inputs (32 px images, 16 words, micro-batch 1: ms_b8 has
161.6 M parameters then, its text-position table and per-patch numbers being smaller) and a row
takes minutes, not hours; on CUDA the inputs are full size.

Each way of saving, each in its own process and engine: a first save (buffers and pages allocated;
not timed), --steps steps, the step with the save, --steps more (more while a background write runs):
    deepspeed       engine.save_checkpoint (ZeRO files: the same world size and stage only)
    elastic         universal.save_elastic in line (any world size / stage)
    elastic+async   async_save.BackgroundWriter: the snapshot in the step, the write in a thread
Columns: bytes on disk; blocking_s, the save's time inside its step; stall_s, the longest step
from the save's on (the save counted in its step) minus the median step before it; noise_s, the
same measure on the steps before the save (the machine's own step-to-step spread); cost_s, the
step time above that median summed over the save's step and the --steps after it (all the steps
during a background write, if more); write_s, until the files are complete; load_s, into a fresh
engine once the training one is freed (deepspeed: load_checkpoint, else load_elastic; the files
are those just written, so mostly in the page cache); peak_rss_gb, the process's. Growth: per
million parameters.
Writes --out (JSON), prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
SHORT = ["model.image_size=32", "model.max_text_len=16"]
SIZES = {
    "tiny": ("configs/tiny_cpu.yaml", []),
    "ms_b8": ("configs/uwox_ms_b8.yaml", []),
    "large": ("configs/uwox_ms_b8.yaml", ["model.hidden=1024", "model.layers=24", "model.heads=16",
                                          "model.intermediate=4096"]),
}
WAYS = ("deepspeed", "elastic", "elastic+async")
PER_PARAMETER = ("blocking_s", "stall_s", "write_s", "load_s")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Bench:
    """One engine of `size` and a step on a fixed synthetic batch (model_bench.synthetic_batch)."""

    def __init__(self, size: str, micro: int, ds_path: str):
        import torch

        from mixvlp_ds.train.config import load_run_config
        from mixvlp_ds.train.ds_config import load_ds_config
        from mixvlp_ds.train.engine import init_distributed

        self.info = init_distributed()
        self.cuda = self.info.device.type == "cuda"
        config, extra = SIZES[size]
        short = [] if self.cuda or size == "tiny" else SHORT
        overrides = [f"data.batch_size={micro}", f"train.batch_size={micro}", "train.steps=100000",
                     "tokenizer=unused", *extra, *short]
        self.run = load_run_config(str(REPO / config), overrides)
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        self.ds = load_ds_config(ds_path, self.run, 1, self.info.device.type, bool(acc.is_bf16_supported()),
                                 bool(acc.is_fp16_supported()))
        self.torch = torch

    def engine(self, seed: int = 0):
        from model_bench import synthetic_batch

        from mixvlp_ds.model import MixVLP
        from mixvlp_ds.train.engine import build_engine

        self.torch.manual_seed(seed)
        engine = build_engine(MixVLP(self.run.model), self.ds, self.run.train)
        self.batch = synthetic_batch(self.run.model, self.run.data.batch_size, self.info.device)
        return engine

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def step(self, engine, save=None) -> tuple[float, float]:
        """(the step's seconds, the save's seconds within it)."""
        start = time.perf_counter()
        out = engine(self.batch)
        engine.backward(out["loss"])
        engine.step()
        self.sync()
        saved = 0.0
        if save is not None:
            t = time.perf_counter()
            save()
            saved = time.perf_counter() - t
        return time.perf_counter() - start, saved


def saver(way: str, engine, writer, target: Path):
    """The save of `way`, as the step calls it."""
    from mixvlp_ds.train.universal import save_elastic

    if way == "deepspeed":
        return lambda: engine.save_checkpoint(str(target), tag="t", save_latest=False)
    if way == "elastic":
        return lambda: save_elastic(engine, target, 0, 1)
    return lambda: writer.submit(writer.snapshot(engine), target)


def one_size(size: str, args) -> dict:
    """The ways given, in this process (main runs one per process: at BERT-large width an engine is
    ~8 GB, its host snapshot 5 GB and each way's files 5-6 GB; the engines of earlier ways, freed,
    still fragment the heap, and the third way was killed for memory on the 24 GiB machine)."""
    b = Bench(size, args.micro_batch, args.ds)
    work = Path(args.work or tempfile.mkdtemp(prefix="ckpt_bench_")) / size
    shutil.rmtree(work, ignore_errors=True)
    rows = [one_way(b, size, way, work, args) for way in args.ways]
    if not args.work:
        shutil.rmtree(work.parent, ignore_errors=True)
    return {"size": size, "parameters": rows[0]["parameters"], "device": str(b.info.device), "rows": rows,
            "micro_batch": args.micro_batch, "short_inputs": not b.cuda, "load_avg": os.getloadavg()}


def one_way(b: Bench, size: str, way: str, work: Path, args) -> dict:
    from mixvlp_ds.train.async_save import BackgroundWriter
    from mixvlp_ds.train.universal import load_elastic

    engine = b.engine()
    params = sum(p.numel() for p in engine.module.parameters() if p.requires_grad)
    writer = BackgroundWriter(nice=args.nice)
    for _ in range(2):  # warm-up: the first steps allocate the optimizer state
        b.step(engine)
    target = work / way.replace("+", "_")
    saver(way, engine, writer, work / "warm-up")()  # the first save allocates (buffers, pages)
    writer.wait()
    shutil.rmtree(work / "warm-up")
    save = saver(way, engine, writer, target)
    before = [b.step(engine)[0] for _ in range(args.steps)]
    t_save, blocking = b.step(engine, save)
    after = []
    while len(after) < args.steps or (writer.busy() and len(after) < args.max_steps):
        after.append(b.step(engine)[0])
    result = writer.wait() if way == "elastic+async" else None
    median, overlap = statistics.median(before), _steps_while(result, after)
    window = after[:max(args.steps, overlap)]  # what follows a save in line can be slow too
    write_s = result.seconds if result is not None else blocking
    folder = target / "t" if way == "deepspeed" else target / "elastic"
    row = {"size": size, "way": way, "parameters": params, "bytes": folder_bytes(folder),
           "blocking_s": round(blocking, 3), "step_median_s": round(median, 3),
           "stall_s": round(max([t_save, *window]) - median, 3),
           "noise_s": round(max(before) - median, 3),  # the same measure on the steps without a save
           "cost_s": round(t_save - median + sum(t - median for t in window), 3),
           "write_s": round(write_s, 3), "steps_during_write": overlap,
           "steps_before": [round(t, 3) for t in before], "save_step_s": round(t_save, 3),
           "steps_after": [round(t, 3) for t in after], "ok": result is None or result.ok}
    writer.close()
    del engine, writer, save
    gc.collect()
    fresh = b.engine(seed=1)  # a resume's engine: built, then the checkpoint replaces its state
    start = time.perf_counter()
    if way == "deepspeed":
        path, _ = fresh.load_checkpoint(str(target), tag="t")
        assert path is not None, f"DeepSpeed could not load {target}"
    else:
        load_elastic(fresh, target)
    b.sync()
    row["load_s"] = round(time.perf_counter() - start, 3)
    del fresh
    gc.collect()
    shutil.rmtree(target)
    row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print(f"[{size}] {way}: {row['bytes'] / 1e6:.1f} MB, blocking {blocking:.2f} s, stall "
          f"{row['stall_s']:.2f} s, write {write_s:.2f} s, load {row['load_s']:.2f} s",
          file=sys.stderr, flush=True)
    return row


def _steps_while(result, after: list[float]) -> int:
    """How many steps after the save overlap its write: all of them for a background write that
    ran past them, else none (a write in line is over when its step ends)."""
    if result is None:
        return 0
    elapsed = 0.0
    for i, t in enumerate(after):
        elapsed += t
        if elapsed >= result.seconds:
            return i + 1
    return len(after)


def growth(rows: list[dict]) -> list[dict]:
    """Per million parameters, for each way: bytes, the step's wait, stall, write and load."""
    out = []
    for r in rows:
        m = r["parameters"] / 1e6
        out.append({"size": r["size"], "way": r["way"],
                    "bytes_per_param": round(r["bytes"] / r["parameters"], 2),
                    **{f"{k}_ms_per_M": round(1e3 * r[k] / m, 3) for k in PER_PARAMETER}})
    return out


def table(rows: list[dict]) -> str:
    cols = ("blocking_s", "stall_s", "noise_s", "cost_s", "write_s", "load_s", "step_median_s")
    lines = ["| size | parameters | way | MB | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
             "|---" * (4 + len(cols)) + "|"]
    for r in rows:
        values = " | ".join(f"{r.get(c, 0):.2f}" for c in cols)
        size = f"{r['size']} | {r['parameters'] / 1e6:.1f} M | {r['way']} | {r['bytes'] / 1e6:.1f}"
        lines.append(f"| {size} | {values} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5, help="steps before the save and at least after it")
    p.add_argument("--max-steps", type=int, default=60, help="at most this many steps wait for a write")
    p.add_argument("--nice", type=int, default=19, help="the writer thread's niceness")
    p.add_argument("--ds", default="ds_configs/zero2.json")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "checkpoint_bench.json"))
    p.add_argument("--work", default="")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)  # run one size in this process
    args = p.parse_args(argv)
    if args.one:
        from mixvlp_ds.train.engine import standalone_env

        os.environ.update(standalone_env())
        print(json.dumps(one_size(args.one, args)))
        return {}
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    result.update(machine=f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
                  ds_config=args.ds, sizes=result.get("sizes", {}))
    for size in args.sizes:  # one process per size and way: never two engines' memory at once
        rows = []
        for way in args.ways:
            cmd = [sys.executable, __file__, "--one", size, "--ways", way, "--micro-batch",
                   str(args.micro_batch), "--steps", str(args.steps), "--max-steps", str(args.max_steps),
                   "--nice", str(args.nice), "--ds", args.ds, *(["--work", args.work] if args.work else [])]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"{size} {way}: failed (exit {proc.returncode})")
            part = json.loads(proc.stdout.strip().splitlines()[-1])
            rows += part["rows"]
            result["sizes"][size] = {**part, "rows": rows}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))  # kept as it goes: a later row may fail
    import torch

    result["torch"] = torch.__version__
    rows = [r for s in SIZES if s in result["sizes"] for r in result["sizes"][s]["rows"]]
    result["growth"] = growth(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(rows))
    return result


if __name__ == "__main__":
    main()
