"""Pre-training input pipeline throughput: samples/s per worker process (ms_B8: 224 px pyramid).

Times `build_pretrain_loader` for the paper's default model (UWOX, BERT-base, ms_B8: 224 px
pyramid, 150 tokens, its mask ratios) at batch 64: read tar, mixing sampler, decode 3 PNGs,
tokenize, MLM mask, patch masks, collate, hand over from the worker process. Per worker count
(0 = the main process), from local disk and from a local S3 server (moto on 127.0.0.1).

    python benchmarks/data_bench.py                      # synthetic mimic-like shards only
    python benchmarks/data_bench.py --real-nih           # + the 621 real NIH images (fetched test data)
    python benchmarks/data_bench.py --shards DIR|s3://bucket/prefix [...]   # + any shard folders

The synthetic rows are always measured (640 mimic-like samples, mixup1 P30), so every run shows
the given shards beside them. `--real-nih` shards the real NIH images (`images_512` of the fetched
test data: $MIXVLP_TEST_DATA, data/real/ or ../shared/data) at 224 px into a temporary folder with
`python -m mixvlp_ds.shard --source nih`, all in one split. A local shard folder is timed from disk
and, uploaded, from the local S3 server; an s3:// one from the S3 that boto3's environment names
(AWS_ENDPOINT_URL). A folder without reports (NIH) is read as an image-only source
(`scenario: custom`); the UWOX model still reads text, so its rows are tokenized as empty reports.

Each row times two epochs of one loader. The plain keys are the first epoch, which includes
starting the workers (fork, each worker's S3 client: ~0.25 CPU-s); `warm_*` the second, what
every later epoch of a run costs (workers persist across epochs). Figures, because the machine
is shared: `per_cpu_s` / `cpu_per_sample_ms` is samples per CPU-second of the processes doing
the work (the DataLoader workers; the main process for workers=0), which other load depresses
far less than wall time: the per-core speed. The target is read on `warm_per_cpu_s`.
`per_worker` is wall-clock samples/s / workers over the epoch (worker start and the first batch included),
`steady_per_worker` the same after the first batch (the sampler fills its 1000-tuple shuffle
buffer first). `warm_main_cpu_per_sample_ms` is what receiving the batches costs the training
process when workers > 0. Each row is the median (by warm_per_cpu_s) of `--repeats` loaders;
`*_runs` list them all.
OMP_NUM_THREADS defaults to 1, as in DataLoader workers, so workers=0 is timed on one core too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TARGET_PER_WORKER = 620      # samples/s per worker process: one H200 at 50% MFU (docs/benchmarks.md)
BATCH = 64
SYNTHETIC = "synthetic mimic-like"
S3_LOCAL = "s3 (moto, 127.0.0.1)"


def make_shards(root: Path, n: int) -> Path:
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.shard.sources.synthetic import SyntheticSource

    out = root / "mimic"
    write_dataset(SyntheticSource("mimic-like", num=n, seed=0), out,
                  ShardOptions(image_size=224, shard_max_samples=64, workers=2, progress=False))
    return out


def real_nih_dir() -> Path:
    """The fetched real NIH images (nih_cxr14/ with images_512/), or SystemExit naming the fetch."""
    from tests.conftest import REAL_DATA_MISSING, find_real_data

    root = find_real_data()
    nih = root / "nih_cxr14" if root is not None else None
    if nih is None or not (nih / "images_512").is_dir():
        where = f" ({nih} has no images_512/)" if nih is not None else ""
        raise SystemExit(f"--real-nih: {REAL_DATA_MISSING}{where}")
    return nih


def shard_real_nih(nih: Path, out: Path) -> str:
    """The real NIH images at 224 px with the project's shard command, every image in one split
    (so one epoch reads all 621); 64 samples per shard, so 2 workers get 5 shards each.
    Returns the command."""
    cmd = [sys.executable, "-m", "mixvlp_ds.shard", "--source", "nih", "--nih-dir", str(nih),
           "--nih-images", "images_512", "--nih-val-fraction", "0", "--nih-test-fraction", "0",
           "--image-size", "224", "--shard-max-samples", "64", "--out", str(out), "--no-progress",
           "--workers", str(os.cpu_count() or 1)]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return shlex.join(["python", *cmd[1:]]).replace(str(out.parent), "$TMPDIR")


def describe(uri: str) -> dict:
    """What the loader needs to know of a shard folder: its largest split, label space, image
    size, and how to read it (a folder without reports is an image-only source)."""
    from mixvlp_ds.data.reader import read_index

    index = read_index(uri)
    split = max(index["splits"].items(), key=lambda kv: kv[1]["num_samples"])[0]
    totals = index.get("totals", {})
    size = int(index.get("image_size", 224))
    if size != 224:
        raise SystemExit(f"{uri}: shards at {size} px; the ms_B8 model this benchmark feeds reads 224 px")
    role = ("image_only" if totals.get("num_texts") == 0 else
            "text_only" if totals.get("num_images") == 0 else "paired")
    return {"uri": uri, "split": split, "num_samples": int(index["splits"][split]["num_samples"]),
            "label_space": index.get("label_space", "chexpert14"), "role": role,
            "institution": index.get("institution") or index.get("source") or "shards"}


def data_config(info: dict, uri: str, workers: int, passes: float):
    """mixup1 P30 for a paired folder (the synthetic rows); an image- or text-only folder alone is
    a `custom` source of that role (its rows stay image-only / text-only)."""
    from mixvlp_ds.data import DataConfig, SourceSpec

    name = info["institution"].replace("/", "_")
    src = SourceSpec(name, uri, role=info["role"], split=info["split"], weight=passes)
    scenario = "mixup1" if info["role"] == "paired" else "custom"
    return DataConfig(sources=[src], scenario=scenario, paired_percent=30, batch_size=BATCH,
                      num_workers=workers, label_space=info["label_space"])


def _live_children_cpu(exclude: set[int]) -> float:
    """CPU seconds so far of this process's live children (the DataLoader workers), but `exclude`."""
    import psutil

    total = 0.0
    for child in psutil.Process().children():
        if child.pid in exclude:
            continue
        try:
            t = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _epoch(loader) -> tuple[int, float, float | None, int]:
    """(samples, wall s, s to the first batch, samples in it) of one epoch."""
    start, n, first, first_n = time.perf_counter(), 0, None, 0
    for batch in loader:
        n += sum(1 for k in batch["key"] if k)   # padding rows (key "") of a short last batch: no sample
        if first is None:
            first, first_n = time.perf_counter() - start, n
    return n, time.perf_counter() - start, first, first_n


def time_loader(cfg, tok, model, exclude: set[int]) -> dict:
    """Two epochs of one loader: the first (the row's plain keys) includes starting the workers
    (fork, their S3 client), the second (`warm_*`) is what every later epoch of a run costs. The
    persistent workers' CPU is read live (psutil) after each epoch, before close(): their
    shutdown is no part of an epoch. exclude: pids of other children (the S3 server)."""
    from mixvlp_ds.data import build_pretrain_loader

    workers = cfg.num_workers
    per = max(workers, 1)
    loader = build_pretrain_loader(cfg, tok, model=model)
    cpu0, live0 = time.process_time(), _live_children_cpu(exclude)   # workers start with the epoch
    n, wall, first, first_n = _epoch(loader)
    main1, live1 = time.process_time(), _live_children_cpu(exclude)
    n2, wall2, _, _ = _epoch(loader)
    main2, live2 = time.process_time(), _live_children_cpu(exclude)
    loader.close()
    warm = (live2 - live1) if workers else (main2 - main1)
    cpu = (live1 - live0) if workers else (main1 - cpu0)
    row = {"samples": n, "seconds": round(wall, 3), "first_batch_s": round(first or 0.0, 3),
           "samples_per_s": round(n / wall, 1), "per_worker": round(n / wall / per, 1),
           "steady_per_worker": round((n - first_n) / max(wall - (first or 0.0), 1e-9) / per, 1),
           "cpu_s": round(cpu, 3), "cpu_per_sample_ms": round(1e3 * cpu / max(n, 1), 3),
           "per_cpu_s": round(n / max(cpu, 1e-9), 1),
           "warm_samples": n2, "warm_seconds": round(wall2, 3), "warm_per_worker": round(n2 / wall2 / per, 1),
           "warm_cpu_s": round(warm, 3), "warm_cpu_per_sample_ms": round(1e3 * warm / max(n2, 1), 3),
           "warm_per_cpu_s": round(n2 / max(warm, 1e-9), 1)}
    if workers:   # what receiving the batches costs the training process
        row["warm_main_cpu_per_sample_ms"] = round(1e3 * (main2 - main1) / max(n2, 1), 3)
    return row


def measure(data: str, where: str, info: dict, uri: str, args, tok, model, exclude: set[int]) -> list[dict]:
    rows = []
    for w in args.workers:
        cfg = data_config(info, uri, w, args.passes if data != SYNTHETIC else 1)
        runs = sorted((time_loader(cfg, tok, model, exclude) for _ in range(args.repeats)),
                      key=lambda r: r["warm_per_cpu_s"])
        r = {"data": data, "source": where, "shards": info.get("given", "temporary"), "workers": w,
             **runs[len(runs) // 2],
             "per_cpu_s_runs": [x["per_cpu_s"] for x in runs],
             "warm_per_cpu_s_runs": [x["warm_per_cpu_s"] for x in runs]}
        rows.append(r)
        print(f"{data:20s} {where:20s} workers={w}  {r['samples']} samples  epoch 1: "
              f"{r['per_worker']:6.1f} per worker (first batch {r['first_batch_s']}s), "
              f"{r['per_cpu_s']:6.1f} per CPU-s; later epochs: "
              f"{r['warm_per_worker']:6.1f} per worker, {r['warm_per_cpu_s']:6.1f} per CPU-s "
              f"{r['warm_per_cpu_s_runs']}", flush=True)
    return rows


def upload(client, folder: Path, bucket: str, prefix: str) -> str:
    for f in sorted(folder.iterdir()):
        if f.is_file():
            client.upload_file(str(f), bucket, f"{prefix}/{f.name}")
    return f"s3://{bucket}/{prefix}"


def table(rows: list[dict]) -> str:
    lines = ["| data | source | workers | epoch 1: per worker (wall) | epoch 1: per CPU-s | "
             "later epochs: per worker (wall) | later epochs: per CPU-s | CPU ms/sample (later) | "
             f"target {TARGET_PER_WORKER} (CPU) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "met" if r["warm_per_cpu_s"] >= TARGET_PER_WORKER else "below"
        lines.append(f"| {r['data']} | {r['source']} | {r['workers']} | {r['per_worker']} | "
                     f"{r['per_cpu_s']} | {r['warm_per_worker']} | {r['warm_per_cpu_s']} | "
                     f"{r['warm_cpu_per_sample_ms']} | {ok} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=640,
                    help="synthetic mimic-like samples written (default 640)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shards", nargs="+", default=[], metavar="DIR|s3://bucket/prefix",
                    help="pyramid shard folders (python -m mixvlp_ds.shard) to time beside the synthetic")
    ap.add_argument("--real-nih", action="store_true",
                    help="shard the fetched real NIH images (python scripts/fetch_test_data.py) at 224 px "
                         "and time them")
    ap.add_argument("--passes", type=float, default=4,
                    help="reads of each given shard per epoch (SourceSpec.weight), for longer timings "
                         "(default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="epochs per row; the median is kept (default 3)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_bench.json"))
    args = ap.parse_args()
    nih = real_nih_dir() if args.real_nih else None   # a missing fetch fails before any work

    from mixvlp_ds.data import s3 as data_s3
    from mixvlp_ds.model.config import ModelConfig
    from mixvlp_ds.text.tokenizer import iter_shard_texts, train_tokenizer
    from tests.conftest import MotoServer

    model = ModelConfig.preset("bert-base", arch="uwox", image="ms_B8")
    load = [os.getloadavg()[0]]
    rows: list[dict] = []
    commands: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        synthetic = make_shards(root, args.samples)
        syn = describe(str(synthetic))
        print(f"wrote {args.samples} synthetic samples at 224 px in {time.perf_counter() - t0:.1f}s "
              f"(split {syn['split']}: {syn['num_samples']})")
        tok = train_tokenizer(iter_shard_texts([synthetic], syn["split"]), root / "tok", vocab_size=2000)
        given: list[tuple[str, str]] = []   # (label, uri)
        if nih is not None:
            t0 = time.perf_counter()
            out = root / "nih-224"
            commands["real NIH"] = shard_real_nih(nih, out)
            print(f"sharded the real NIH images in {time.perf_counter() - t0:.1f}s: {commands['real NIH']}")
            given.append(("real NIH", str(out)))
        described = {uri: {**describe(uri), "given": uri} for uri in args.shards}
        given += [(f"{described[uri]['institution']} shards", uri) for uri in args.shards]
        described.update({uri: describe(uri) for label, uri in given if uri not in described})
        # s3:// folders as given are read from the environment's S3, before the local server takes over
        for label, uri in given:
            if uri.startswith("s3://"):
                where = f"s3 ({os.environ.get('AWS_ENDPOINT_URL') or 'AWS'})"
                rows += measure(label, where, described[uri], uri, args, tok, model, set())
        server = MotoServer()
        server.start()
        moto = {server.proc.pid}
        # straight to moto's port: the fault-injection relay in front of it is threads of this
        # process, whose CPU would count as the pipeline's in the workers=0 rows
        os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{server.port}"
        # the loader keeps one S3 client per process, made for the endpoint of its first read
        data_s3._CLIENTS.clear()
        try:
            client = server.client()
            client.create_bucket(Bucket="bench")
            local = [(SYNTHETIC, str(synthetic))] + [(lb, u) for lb, u in given if not u.startswith("s3://")]
            info = {str(synthetic): syn, **described}
            for i, (label, uri) in enumerate(local):
                s3 = upload(client, Path(uri), "bench", f"d{i}")
                rows += measure(label, "local", info[uri], uri, args, tok, model, moto)
                load.append(os.getloadavg()[0])
                rows += measure(label, S3_LOCAL, info[uri], s3, args, tok, model, moto)
                load.append(os.getloadavg()[0])
        finally:
            server.stop()
    print("\n" + table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{os.cpu_count()}-core CPU",
              "pipeline": f"ms_B8 UWOX (BERT-base): 224 px 3-level PNG pyramid, tokenize 150, MLM mask, "
                          f"patch masks, collate, batch {BATCH}; synthetic: mixup1 P30; image-only shards: "
                          "custom, image_only rows",
              "samples": args.samples, "passes": args.passes, "repeats": args.repeats, "rows": rows,
              "shard_commands": commands, "load_avg_1m": [round(x, 2) for x in load],
              "load_avg_1m_at_end": os.getloadavg()[0], "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "target_per_worker": TARGET_PER_WORKER}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
