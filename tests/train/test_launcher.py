"""The real launcher path: torchrun, 2 processes (gloo, DeepSpeed's CPU accelerator), S3 checkpoints,
the shipped DeepSpeed configs as they are (bf16: the CPU accelerator has it).

Three torchrun jobs share the work (each process start costs ~10 s):
  A: two "nodes" on 127.0.0.1 (two torchrun --nnodes 2 --node_rank i, one rank each, separate output
     folders, one rendezvous), ds_configs/zero2.json (ZeRO-2, bf16), 10 steps: per-node uploads, rank 0
     commits; A's losses are the uninterrupted reference.
  B: the same run on one node (--nproc_per_node 2), SIGKILLed after a checkpoint is committed;
     then resumed from S3 into a fresh folder: the later losses equal A's to 1e-6.
  C: ds_configs/zero3.json (ZeRO-3, bf16 "auto"), 2 processes, committed checkpoint with both ranks'
     model shards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixvlp_ds.storage import parse_s3_uri
from mixvlp_ds.train.metrics import read_metrics
from mixvlp_ds.train.s3sync import S3Checkpoints

REPO = Path(__file__).resolve().parents[2]
STEPS = 10
COMMON = [f"train.steps={STEPS}", "train.ckpt_every=2", "train.keep_last=2", "train.log_every=1",
          "train.progress=false", "train.upload_backoff=0.2", "data.batch_size=4", "train.batch_size=8"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(config, out_dir, overrides, ds="zero2.json", nproc=2, nnodes=1, node_rank=0, port=None,
             log=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), DS_ACCELERATOR="cpu")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--nnodes={nnodes}",
           f"--node_rank={node_rank}", "--master_addr=127.0.0.1", f"--master_port={port or free_port()}",
           str(REPO / "launchers" / "pretrain.py"), "--config", str(config),
           "--deepspeed_config", str(REPO / "ds_configs" / ds), f"train.output_dir={out_dir}", *overrides]
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its workers (they run in sessions of their own)."""
    import psutil

    victims = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def finish(procs, logs, timeout=240):
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(p)
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, Path(log).read_text()[-4000:]


def losses(out_dir) -> dict[int, float]:
    return {s: r["loss"] for s, r in read_metrics(Path(out_dir) / "metrics.jsonl").items()}


@pytest.fixture(scope="module")
def two_node_run(train_assets, s3_server, tmp_path_factory):
    """Job A; yields (uri, node output dirs)."""
    s3_server.reset()
    s3_server.client().create_bucket(Bucket="ckpt")
    tmp = tmp_path_factory.mktemp("two_nodes")
    uri = "s3://ckpt/two-nodes"
    port = free_port()
    procs, logs = [], []
    for node in (0, 1):
        logs.append(tmp / f"node{node}.log")
        procs.append(torchrun(train_assets["config"], tmp / f"node{node}", COMMON + [f"train.ckpt_uri={uri}"],
                              nproc=1, nnodes=2, node_rank=node, port=port, log=logs[-1]))
    finish(procs, logs)
    return uri, [tmp / "node0", tmp / "node1"]


def test_two_nodes_upload_their_own_ranks_and_rank0_commits(two_node_run):
    uri, (node0, node1) = two_node_run
    s3 = S3Checkpoints(parse_s3_uri(uri))
    assert s3.latest() == f"step_{STEPS:08d}"
    assert s3.committed_tags() == ["step_00000008", f"step_{STEPS:08d}"]  # keep_last=2
    files = {e["path"] for e in s3.committed_manifest(f"step_{STEPS:08d}")["files"]}
    # the default format: each rank's share of elastic/, no DeepSpeed files
    assert {"rank_00000.pt", "rank_00001.pt", "run_config.yaml", "elastic/params_00000.pt",
            "elastic/params_00001.pt", "elastic/meta.json", "tokenizer/vocab.txt"} <= files
    assert not [f for f in files if "model_states" in f or "optim_states" in f]
    # each node's disk holds only its own ranks' files: the upload really came from two places
    local1 = {p.name for p in (node1 / "checkpoints" / f"step_{STEPS:08d}").iterdir()}
    assert "rank_00001.pt" in local1 and "rank_00000.pt" not in local1
    assert "mp_rank_00_model_states.pt" not in local1
    local0 = {p.name for p in (node0 / "checkpoints" / f"step_{STEPS:08d}").iterdir()}
    assert "rank_00000.pt" in local0 and "rank_00001.pt" not in local0
    ref = losses(node0)
    assert sorted(ref) == list(range(1, STEPS + 1)) and ref[STEPS] < ref[1]
    assert (node0 / "model" / "config.json").is_file()  # exported for fine-tuning


def test_two_nodes_resume_on_one_process_from_s3(two_node_run, train_assets, tmp_path):
    """Across nodes: each node uploaded its own rank's elastic share; one process on one node
    downloads the committed checkpoint from S3 and continues from it (elastic)."""
    uri, _ = two_node_run
    manifest = S3Checkpoints(parse_s3_uri(uri)).committed_manifest(f"step_{STEPS:08d}")
    files = {e["path"] for e in manifest["files"]}
    assert {"elastic/params_00000.pt", "elastic/params_00001.pt", "elastic/meta.json"} <= files
    log = tmp_path / "one.log"
    # its own prefix for its checkpoints: the two-node run's stays as it was for the other tests
    more = [f"train.resume={uri}", "train.ckpt_uri=s3://ckpt/one-from-two", f"train.steps={STEPS + 2}"]
    finish([torchrun(train_assets["config"], tmp_path / "one", COMMON + more, nproc=1, log=log)], [log])
    text = log.read_text()
    assert "continuing from" in text and "elastic: world_size 2 (now 1)" in text
    assert sorted(losses(tmp_path / "one")) == [STEPS + 1, STEPS + 2]


def test_sigkill_then_resume_from_s3_gives_the_same_losses(two_node_run, train_assets, s3_server, tmp_path):
    ref = losses(two_node_run[1][0])
    uri = "s3://ckpt/killed"
    s3 = S3Checkpoints(parse_s3_uri(uri))
    proc = torchrun(train_assets["config"], tmp_path / "killed", COMMON + [f"train.ckpt_uri={uri}"],
                    log=tmp_path / "killed.log")
    deadline = time.time() + 240
    while s3.latest() is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    kill_tree(proc)  # every rank and the launcher, no clean-up
    killed_at = s3.latest()
    assert killed_at is not None, (tmp_path / "killed.log").read_text()[-3000:]
    assert killed_at < f"step_{STEPS:08d}", "the run finished before it could be killed"
    log = tmp_path / "resumed.log"
    resumed = torchrun(train_assets["config"], tmp_path / "resumed", COMMON + [f"train.ckpt_uri={uri}",
                       "train.resume=auto"], log=log)
    finish([resumed], [log])
    start = int(killed_at.split("_")[1])
    assert "continuing from" in log.read_text()
    got = losses(tmp_path / "resumed")
    assert sorted(got) == list(range(start + 1, STEPS + 1))
    for step, loss in got.items():
        assert loss == pytest.approx(ref[step], abs=1e-6, rel=0), (step, loss, ref[step])
    assert s3.latest() == f"step_{STEPS:08d}"


def test_zero3_two_processes_commit_sharded_checkpoints(train_assets, s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="zero3")
    uri = "s3://zero3/run"
    log = tmp_path / "z3.log"
    finish([torchrun(train_assets["config"], tmp_path / "z3", [*COMMON[1:], "train.steps=4",
                     f"train.ckpt_uri={uri}", "train.checkpoint_format=both"], ds="zero3.json", log=log)],
           [log])
    s3 = S3Checkpoints(parse_s3_uri(uri))
    assert s3.latest() == "step_00000004"
    files = {e["path"] for e in s3.committed_manifest("step_00000004")["files"]}
    assert {"zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt",
            "elastic/params_00000.pt", "elastic/params_00001.pt"} <= files  # both formats, both ranks
    got = losses(tmp_path / "z3")
    assert sorted(got) == [1, 2, 3, 4] and all(v == v for v in got.values())
    assert "bf16, ZeRO stage 3" in log.read_text()
