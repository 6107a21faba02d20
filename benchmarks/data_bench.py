"""Pre-training input pipeline throughput: samples/s per worker process (ms_B8: 224 px pyramid).

Writes mimic-like synthetic shards at 224 px, then times `build_pretrain_loader` (read tar,
mixing sampler, decode 3 PNGs, tokenize to 150, MLM mask, collate, hand over from the worker
process) for 1 and 2 workers, from local disk and from a local S3 server (moto on 127.0.0.1).
Target: >= 150 samples/s per worker process.

    python benchmarks/data_bench.py [--samples 640] [--workers 0 1 2]

Three figures per row, because the machine is shared: `cpu_per_sample_ms` / `per_cpu_s` is
samples per CPU-second of the processes doing the work (the DataLoader workers, from
RUSAGE_CHILDREN once they have exited; the main process for workers=0), which other load cannot
depress: the per-core speed. `per_worker` is wall-clock samples/s / workers over the whole epoch
(worker start and the first batch included), `steady_per_worker` the same after the first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def make_shards(root: Path, n: int) -> Path:
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.shard.sources.synthetic import SyntheticSource

    out = root / "mimic"
    write_dataset(SyntheticSource("mimic-like", num=n, seed=0), out,
                  ShardOptions(image_size=224, shard_max_samples=64, workers=2))
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_loader(uri: str, tok, workers: int, split: str) -> dict:
    from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader

    cfg = DataConfig(sources=[SourceSpec("mimic", uri, split=split)], scenario="mixup1", paired_percent=30,
                     batch_size=64, num_workers=workers, image_size=224)
    loader = build_pretrain_loader(cfg, tok)
    cpu0, child0 = time.process_time(), _children_cpu()
    start, n, first, first_n = time.perf_counter(), 0, None, 0
    for batch in loader:
        n += len(batch["key"])
        if first is None:
            first, first_n = time.perf_counter() - start, n
    wall = time.perf_counter() - start
    # Workers have exited (persistent_workers=False) and been reaped: their CPU is in RUSAGE_CHILDREN.
    cpu = (_children_cpu() - child0) if workers else (time.process_time() - cpu0)
    per = max(workers, 1)
    return {"samples": n, "seconds": round(wall, 3), "first_batch_s": round(first or 0.0, 3),
            "samples_per_s": round(n / wall, 1), "per_worker": round(n / wall / per, 1),
            "steady_per_worker": round((n - first_n) / max(wall - (first or 0.0), 1e-9) / per, 1),
            "cpu_s": round(cpu, 3), "cpu_per_sample_ms": round(1e3 * cpu / max(n, 1), 2),
            "per_cpu_s": round(n / max(cpu, 1e-9), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "data_bench.json"))
    args = ap.parse_args()

    from mixvlp_ds.data.reader import read_index
    from mixvlp_ds.text.tokenizer import iter_shard_texts, train_tokenizer
    from tests.conftest import MotoServer

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        shards = make_shards(root, args.samples)
        split = max(read_index(str(shards))["splits"].items(), key=lambda kv: kv[1]["num_samples"])[0]
        print(f"wrote {args.samples} samples at 224 px in {time.perf_counter() - t0:.1f}s (split {split})")
        tok = train_tokenizer(iter_shard_texts([shards], split), root / "tok", vocab_size=2000)
        server = MotoServer()
        server.start()
        os.environ["AWS_ENDPOINT_URL"] = server.url
        try:
            client = server.client()
            client.create_bucket(Bucket="bench")
            for f in sorted(shards.iterdir()):
                client.upload_file(str(f), "bench", f"mimic/{f.name}")
            rows = []
            for where, uri in (("local", str(shards)), ("s3 (moto, 127.0.0.1)", "s3://bench/mimic")):
                for w in args.workers:
                    r = time_loader(uri, tok, w, split)
                    rows.append({"source": where, "workers": w, **r})
                    print(f"{where:22s} workers={w}  {r['samples']} samples  "
                          f"{r['samples_per_s']:7.1f} samples/s  {r['per_worker']:7.1f} per worker "
                          f"(steady {r['steady_per_worker']}, first batch {r['first_batch_s']}s)  "
                          f"{r['per_cpu_s']:7.1f} per CPU-s")
        finally:
            server.stop()
    print("\n| source | workers | samples/s (wall) | per worker (wall) | per worker, after 1st batch | "
          "per CPU-second | target 150 (CPU) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['workers']} | {r['samples_per_s']} | {r['per_worker']} | "
              f"{r['steady_per_worker']} | {r['per_cpu_s']} | {'ok' if r['per_cpu_s'] >= 150 else 'below'} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{os.cpu_count()}-core CPU", "pipeline": "ms_B8: 224 px 3-level PNG pyramid, "
              "tokenize 150, MLM mask, collate, batch 64, mixup1 P30", "samples": args.samples, "rows": rows,
              "load_avg_1m_at_end": os.getloadavg()[0],
              "target_per_worker": 150}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
