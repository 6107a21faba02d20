"""Data-loader workers never outlive their rank: each worker watches the process that started it and
exits within a fraction of a second of its death (torch's own check waits for 5 idle seconds).

  - a process holding a loader with 2 persistent workers is SIGKILLed: its workers are gone within 1 s;
  - the real launcher (torchrun, one rank, 2 workers) is SIGKILLed mid-run: the rank notices and exits,
    and every worker pid is gone within 1.5 s of the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from tests.train.test_launcher import torchrun

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gone(pids: list[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            pass
    return True


def wait_gone(pids: list[int], timeout: float) -> float | None:
    """Seconds until every pid is gone (a zombie counts as gone), None when some outlive `timeout`."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if gone(pids):
            return time.time() - t0
        time.sleep(0.02)
    return None


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


HOLDER = textwrap.dedent("""
    import os, sys, time
    import yaml
    from mixvlp_ds.train.config import load_run_config
    from mixvlp_ds.data import build_pretrain_loader
    from mixvlp_ds.text.tokenizer import load_tokenizer
    run = load_run_config(sys.argv[1], ["data.num_workers=2"])
    loader = build_pretrain_loader(run.data, load_tokenizer(run.tokenizer), model=run.model)
    it = iter(loader)
    next(it)                      # the persistent workers are up and prefetching
    print("ready", flush=True)
    time.sleep(600)
""")


def test_workers_exit_when_the_process_holding_the_loader_is_killed(train_assets, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(train_assets["config"])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    workers: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        workers = [c.pid for c in psutil.Process(proc.pid).children()]
        assert len(workers) == 2, workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        took = wait_gone(workers, 10)
        assert took is not None and took < 1.0, took
    finally:
        kill_all([proc.pid, *workers])


def test_workers_exit_with_their_rank_when_the_launcher_is_killed(train_assets, tmp_path):
    log = tmp_path / "run.log"
    proc = torchrun(train_assets["config"], tmp_path / "out",
                    ["train.steps=400", "train.log_every=1", "train.progress=false", "data.num_workers=2",
                     "data.batch_size=4", "train.batch_size=4", "train.ckpt_every=1000"], nproc=1, log=log)
    pids: list[int] = []
    try:
        deadline = time.time() + 240
        while "step 3/400" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert "step 3/400" in log.read_text(), log.read_text()[-3000:]
        (rank,) = psutil.Process(proc.pid).children()
        workers = [c.pid for c in rank.children()]
        pids = [rank.pid, *workers]
        assert len(workers) == 2, rank.children()
        os.kill(proc.pid, signal.SIGKILL)          # the launcher only
        proc.wait()
        took = wait_gone(pids, 10)
        assert took is not None and took < 1.5, (took, [p for p in pids if not gone([p])])
    finally:
        kill_all([proc.pid, *pids])
