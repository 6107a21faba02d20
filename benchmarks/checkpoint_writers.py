"""Which background writer for the elastic checkpoint: the candidates, measured on one engine size.

    python benchmarks/checkpoint_writers.py                      # ms_b8, every candidate, one process each
    python benchmarks/checkpoint_writers.py --candidates thread thread_nice19 --size tiny

Each candidate writes the same state (the full fp32 weights and Adam moments of every parameter,
gathered as universal.snapshot_share gathers them) while training goes on, in its own process
(one engine at a time), with the steps and inputs of checkpoint_bench.py:
    thread          async_save.BackgroundWriter at niceness 0: our snapshot, a Python thread doing
                    torch.save through a hashing file object to a temp name, fsync, rename
    thread_nice19   the same at niceness 19 (Linux: setpriority on the thread's id): what we ship
    dcp_thread      torch.distributed.checkpoint.async_save, AsyncCheckpointerType.THREAD, its own
                    staging (DefaultStager) and FileSystemWriter (.distcp files; fsync as shipped)
    dcp_process     the same with AsyncCheckpointerType.PROCESS
    ds_decoupled    DeepSpeed 0.19.8's DecoupledCheckpointEngine ("checkpoint": {"writer": {"type":
                    "python", "decoupled": true}}): save(state, path); the next engine.step() commits
                    (the "fast" writer needs the async_io op: libaio is not on this machine)
The rows `process` / `process_nice19` of results/checkpoint_writers.json are a writer process of
our own (a memfd snapshot that a subprocess torch.saved), measured and not kept (no lower stall
than the thread, ~300 MB more per rank): its code is not in the tree.
Columns: blocking_s (the step waits for it), write_s (until the files are complete), cost_s (the
step time above the median summed over the save's step and the steps until the write is done, at
least --steps), stall_s (the longest of those steps minus the median), bytes. Writes --out.
--gil: no engine; the main thread's pauses while a thread writes a 1.8 GiB share, through the
hashing file object (BackgroundWriter) or with a plain torch.save(obj, path) ("thread_path").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from checkpoint_bench import Bench, folder_bytes  # noqa: E402

CANDIDATES = ("thread", "thread_nice19", "dcp_thread", "dcp_process", "ds_decoupled")


def gathered(engine) -> dict:
    """{"<name>/<key>": full fp32 CPU tensor} of every trained parameter (the elastic state)."""
    from mixvlp_ds.train.universal import snapshot_share

    share = snapshot_share(engine, 0, 1)
    return {f"{name}/{key}": t for name, d in share.tensors().items() for key, t in d.items()}


def start(candidate: str, engine, target: Path, writer):
    """Begin the save; returns done() -> bool. Only what runs here blocks the step."""
    target.mkdir(parents=True, exist_ok=True)
    if candidate.startswith("dcp"):
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

        kind = AsyncCheckpointerType.PROCESS if candidate == "dcp_process" else AsyncCheckpointerType.THREAD
        group = writer or dist.new_group(backend="gloo")
        fut = dcp.async_save(gathered(engine), storage_writer=dcp.FileSystemWriter(str(target)),
                             process_group=group, async_checkpointer_type=kind)
        fut = getattr(fut, "upload_completion", fut)
        return fut.done
    if candidate == "ds_decoupled":
        from deepspeed.runtime.checkpoint_engine import CheckpointCommitInfo

        ce, info = engine.checkpoint_engine, CheckpointCommitInfo("t", str(target), False)
        ce.create(info)
        ce.save(gathered(engine), str(target / "params_00000.pt"))
        return lambda: ce.get_commit_info() is None  # engine.step() commits it: it waits for the write
    writer.submit(writer.snapshot(engine), target)
    return lambda: not writer.busy()


def one(candidate: str, args) -> dict:
    if candidate == "ds_decoupled":  # the deepspeed launcher sets these; the engine reads them
        os.environ.setdefault("CROSS_RANK", "0")
        os.environ.setdefault("CROSS_SIZE", "1")
    b = Bench(args.size, 1, args.ds)
    if candidate == "ds_decoupled":
        # "data_parallel" unset fails in deepspeed.initialize without an mpu (no attribute dp_rank)
        b.ds["checkpoint"] = {"writer": {"type": "python", "decoupled": True, "data_parallel": "replica"}}
    engine = b.engine()
    writer = None
    if candidate.startswith("thread"):
        from mixvlp_ds.train.async_save import BackgroundWriter

        writer = BackgroundWriter(nice=19 if candidate.endswith("nice19") else 0)
    elif candidate.startswith("dcp"):
        import torch.distributed as dist

        writer = dist.new_group(backend="gloo")  # as torchtitan: not the training's group
    work = Path(args.work or tempfile.mkdtemp(prefix="ckpt_writers_")) / candidate
    for _ in range(2):
        b.step(engine)
    from mixvlp_ds.train.universal import ensure_adam_state

    ensure_adam_state(engine)
    before = [b.step(engine)[0] for _ in range(args.steps)]
    box = {}
    t0 = time.perf_counter()
    t_save, blocking = b.step(engine, lambda: box.update(done=start(candidate, engine, work, writer)))
    after, write_s = [], None
    while len(after) < args.steps or write_s is None:
        if write_s is None and box["done"]():
            write_s = time.perf_counter() - t0 - (t_save - blocking)
        if len(after) >= args.max_steps:
            while not box["done"]():
                time.sleep(0.05)
            write_s = time.perf_counter() - t0 - (t_save - blocking)
            break
        after.append(b.step(engine)[0])
    if writer is not None and hasattr(writer, "close"):
        writer.close()
    if candidate == "ds_decoupled":
        engine.checkpoint_engine.cleanup()
    if candidate == "dcp_process":  # its daemon process would outlive os._exit (and hold our stdout)
        from torch.distributed.checkpoint import _async_process_executor as executor

        if executor._CHECKPOINT_PROCESS is not None:
            executor._CHECKPOINT_PROCESS.__del__()
    median = statistics.median(before)
    row = {"candidate": candidate, "size": args.size, "bytes": folder_bytes(work),
           "blocking_s": round(blocking, 3), "write_s": round(write_s, 3),
           "stall_s": round(max([t_save, *after]) - median, 3), "step_median_s": round(median, 3),
           "cost_s": round(t_save - median + sum(t - median for t in after), 3),
           "steps_before": [round(t, 3) for t in before], "save_step_s": round(t_save, 3),
           "steps_after": [round(t, 3) for t in after], "load_avg": os.getloadavg()}
    shutil.rmtree(work, ignore_errors=True)
    return row


def gil_pauses(kind: str, numel: int, work: Path) -> dict:
    """The main thread's pauses while a writer thread writes a share of 3 x `numel` fp32 numbers:
    a Python loop stands for a GPU run's launch thread (which needs the GIL to queue each kernel)."""
    import torch

    from mixvlp_ds.train.async_save import BackgroundWriter
    from mixvlp_ds.train.universal import Share

    writer = BackgroundWriter(nice=19 if kind.endswith("nice19") else 0)
    buf = writer.buffer.get(3 * numel)
    buf.fill_(1.0)
    layout = [("w", key, i * numel, [numel]) for i, key in enumerate(("fp32", "exp_avg", "exp_avg_sq"))]
    share = Share(0, 1, buf, layout, {"global_steps": 0}, None)
    if kind == "thread_path":
        t = threading.Thread(target=torch.save, args=(share.tensors(), work / "params_00000.pt"))
        t.start()
        busy = t.is_alive
    else:
        writer.submit(share, work)
        busy = writer.busy
    start, last, gaps = time.perf_counter(), time.perf_counter(), []
    while busy():
        now = time.perf_counter()
        if now - last > 1e-3:
            gaps.append(now - last)
        last = now
    wall = time.perf_counter() - start
    writer.close()
    return {"kind": kind, "gib": round(12 * numel / 2 ** 30, 2), "write_s": round(wall, 2),
            "paused_s": round(sum(gaps), 3), "max_pause_ms": round(1e3 * max(gaps, default=0), 1),
            "pauses_over_1ms": len(gaps)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidates", nargs="+", choices=CANDIDATES, default=list(CANDIDATES))
    p.add_argument("--size", default="ms_b8", choices=("tiny", "ms_b8", "large"))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--ds", default="ds_configs/zero2.json")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "checkpoint_writers.json"))
    p.add_argument("--work", default="")
    p.add_argument("--gil", action="store_true", help="only the main thread's pauses (no engine)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gil:  # the share of ms_b8: 161.7 M parameters x 3 fp32 tensors
        work = Path(args.work or tempfile.mkdtemp(prefix="ckpt_gil_"))
        kinds = ("thread_path", "thread", "thread_nice19")
        rows = [gil_pauses(k, 161_731_094, work) for k in kinds]
        for r in rows:
            print(json.dumps(r), flush=True)
        shutil.rmtree(work, ignore_errors=True)
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {"rows": []}
        result["gil"] = rows
        out.write_text(json.dumps(result, indent=1))
        return result
    if args.one:
        from mixvlp_ds.train.engine import standalone_env

        os.environ.update(standalone_env())
        print(json.dumps(one(args.one, args)), flush=True)
        os._exit(0)  # DCP's and DeepSpeed's writer processes would otherwise hold the exit
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {"rows": []}
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}"
    result["rows"] = [r for r in result["rows"] if (r["candidate"], r["size"]) not in
                      {(c, args.size) for c in args.candidates}]
    for c in [c for _ in range(args.repeats) for c in args.candidates]:  # repeats interleaved: load drifts
        cmd = [sys.executable, __file__, "--one", c, "--size", args.size, "--steps", str(args.steps),
               "--max-steps", str(args.max_steps), "--ds", args.ds]
        cmd += ["--work", args.work] if args.work else []
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, timeout=900)
        lines = [x for x in proc.stdout.splitlines() if x.startswith('{"candidate"')]
        row = json.loads(lines[-1]) if lines else {"candidate": c, "size": args.size,
                                                   "error": f"exit {proc.returncode}"}
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.startswith("steps")}), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
