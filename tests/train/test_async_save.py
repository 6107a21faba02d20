"""Background elastic checkpoints (train/async_save.py) on real DeepSpeed process groups.

Two ranks (bf16 ZeRO-2, the model of test_universal.py) train 3 steps, then:
  sync/     universal.save_elastic (the in-line path)
  async/    BackgroundWriter.snapshot at the same step, 2 more training steps, THEN submit: what is
            written must be the state of the snapshot, not the state the engine has moved on to;
  failed/   rank 1's share cannot be written (a directory squats its temp name): both ranks learn it,
            no meta.json; the same writer then writes again/ correctly;
  old/      sync/ rewritten with one storage per tensor (the layout of files written before the
            snapshot buffer): load_elastic still reads it.
A separate process is SIGKILLed while its writer thread writes a 1 GiB share.

This file is also the ranks' program (worker()).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def worker(out: Path, tmp: Path) -> None:
    import deepspeed
    import torch.distributed as dist

    from mixvlp_ds.train.async_save import BackgroundWriter, CheckpointWriteError
    from mixvlp_ds.train.universal import load_elastic, save_elastic
    from tests.train.test_universal import build_engine, gathered_state, train_steps

    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    res: dict = {}
    engine = build_engine(2, "bf16", world)
    train_steps(engine, range(3), rank, world)
    save_elastic(engine, tmp / "sync", rank, world)  # first: it links DeepSpeed's optimizer-state views
    res["at_snapshot"] = gathered_state(engine)["params"]
    writer = BackgroundWriter(rank, world)
    share = writer.snapshot(engine)
    train_steps(engine, range(3, 5), rank, world)  # the engine moves on before the write starts
    res["moved_on"] = gathered_state(engine)["params"]
    done = []
    writer.submit(share, tmp / "async", on_done=done.append)
    res["busy_after_submit"] = writer.busy()
    result = writer.wait()
    res["result"] = {"ok": result.ok, "files": result.files, "step": result.step, "seconds": result.seconds,
                     "on_done": [r.ok for r in done]}

    (tmp / "failed" / "elastic").mkdir(parents=True, exist_ok=True)
    if rank == 1:
        (tmp / "failed" / "elastic" / "params_00001.pt.tmp").mkdir()
    share = writer.snapshot(engine)
    writer.submit(share, tmp / "failed", on_done=done.append)
    try:
        writer.wait()
        res["failed"] = "no error"
    except CheckpointWriteError as e:
        res["failed"] = str(e)
    res["errors"] = [str(e) for e in writer.errors]
    res["on_done_error"] = done[-1].error
    share = writer.snapshot(engine)
    writer.submit(share, tmp / "again")
    res["again"] = writer.wait().ok
    res["again_state"] = gathered_state(engine)["params"]
    writer.close()

    if rank == 0:  # sync/ in the layout of older files: one storage per tensor
        shutil.copytree(tmp / "sync", tmp / "old")
        for f in (tmp / "old" / "elastic").glob("params_*.pt"):
            share_dict = torch.load(f, weights_only=True)
            torch.save({n: {k: v.clone() for k, v in d.items()} for n, d in share_dict.items()}, f)
    dist.barrier()
    for name in ("old", "async"):
        fresh = build_engine(2, "bf16", world, seed=1)
        load_elastic(fresh, tmp / name)
        res[f"loaded_{name}"] = gathered_state(fresh)["params"]
    if rank == 0:
        torch.save(res, out)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("async_save")
    out, log = tmp / "result.pt", tmp / "ranks.log"
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
           "ranks", str(out), str(tmp)]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == 0, log.read_text()[-4000:]
    return torch.load(out, weights_only=False), tmp


def shares(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("params_*.pt")):
        out |= torch.load(f, weights_only=True)
    return out


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}[{key}] differs"


def test_background_write_holds_the_snapshot_not_the_later_steps(two_ranks):
    res, tmp = two_ranks
    sync, bg = tmp / "sync" / "elastic", tmp / "async" / "elastic"
    assert res["result"]["ok"] and res["result"]["on_done"] == [True] and res["result"]["step"] == 3
    assert_same(shares(bg), shares(sync))
    assert_same(shares(bg), res["at_snapshot"])
    # the two later steps did change the engine: the write read the snapshot, not the engine
    moved, snap = res["moved_on"], res["at_snapshot"]
    assert any(not torch.equal(moved[n]["fp32"], snap[n]["fp32"]) for n in snap)
    assert json.loads((bg / "meta.json").read_text()) == json.loads((sync / "meta.json").read_text())
    s, a = (torch.load(d / "state.pt", weights_only=False) for d in (sync, bg))
    assert s == a
    # rank 0's file as described (size, sha256): what COMMITTED needs, computed while writing
    (entry,) = res["result"]["files"]
    data = (bg / entry["path"]).read_bytes()
    assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert not list(bg.glob("*.tmp"))
    assert_same(res["loaded_async"], res["at_snapshot"])  # load_elastic reads what the writer wrote


def test_a_failed_write_is_reported_on_every_rank_and_the_writer_recovers(two_ranks):
    res, tmp = two_ranks
    assert "rank 1: IsADirectoryError" in res["failed"] and "params_00001.pt.tmp" in res["failed"]
    assert res["errors"] == [res["failed"]] and res["on_done_error"] == res["failed"]
    assert not (tmp / "failed" / "elastic" / "meta.json").exists()
    assert res["again"] is True
    assert_same(shares(tmp / "again" / "elastic"), res["again_state"])


def test_older_files_one_storage_per_tensor_still_load(two_ranks):
    res, _ = two_ranks
    assert_same(res["loaded_old"], res["at_snapshot"])


# ---------------------------------------------------------------- SIGKILL during the write

KILLED = """
import sys, torch
from pathlib import Path
from mixvlp_ds.train.async_save import BackgroundWriter
from mixvlp_ds.train.universal import Share

root, numel = Path(sys.argv[1]), int(sys.argv[2])
w = BackgroundWriter()
def share(n):
    buf = w.buffer.get(n)
    buf.fill_(1.5)
    meta = {"format": "mixvlp-elastic-1", "global_steps": n}
    return Share(0, 1, buf, [("w", "fp32", 0, [n])], meta, {"lr_scheduler": None, "param_groups": []})
w.submit(share(1000), root / "step_1")       # a committed checkpoint
w.wait()
w.submit(share(numel), root / "step_2")      # a large one, killed while it is written
print("writing", flush=True)
w.wait()
print("finished", flush=True)
"""


def test_sigkill_during_the_background_write_leaves_no_meta_and_no_part_file(tmp_path):
    numel = 256 * 2 ** 20  # 1 GiB: the write takes long enough to be caught in the middle
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path), str(numel)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n", proc.stderr.read()[-3000:]
    tmp_file = tmp_path / "step_2" / "elastic" / "params_00000.pt.tmp"
    deadline = time.time() + 120
    while not (tmp_file.exists() and tmp_file.stat().st_size > 0):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    step2 = tmp_path / "step_2" / "elastic"
    assert tmp_file.exists() and tmp_file.stat().st_size < numel * 4  # cut short
    assert not (step2 / "params_00000.pt").exists() and not (step2 / "meta.json").exists()
    step1 = tmp_path / "step_1" / "elastic"
    assert json.loads((step1 / "meta.json").read_text())["global_steps"] == 1000
    assert torch.equal(torch.load(step1 / "params_00000.pt", weights_only=True)["w"]["fp32"],
                       torch.full((1000,), 1.5))


if __name__ == "__main__" and sys.argv[1] == "ranks":
    worker(Path(sys.argv[2]), Path(sys.argv[3]))
