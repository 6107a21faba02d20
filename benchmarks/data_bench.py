"""Pre-training input pipeline throughput: samples/s per worker process (ms_B8: 224 px pyramid).

Writes mimic-like synthetic shards at 224 px, then times `build_pretrain_loader` (read tar,
mixing sampler, decode 3 PNGs, tokenize to 150, MLM mask, collate, hand over from the worker
process) for 1 and 2 workers, from local disk and from a local S3 server (moto on 127.0.0.1).
Target: >= 150 samples/s per worker process.

    python benchmarks/data_bench.py [--samples 640] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
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


def time_loader(uri: str, tok, workers: int, split: str) -> dict:
    from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader

    cfg = DataConfig(sources=[SourceSpec("mimic", uri, split=split)], scenario="mixup1", paired_percent=30,
                     batch_size=64, num_workers=workers, image_size=224)
    loader = build_pretrain_loader(cfg, tok)
    start, n, first = time.perf_counter(), 0, None
    for batch in loader:
        n += len(batch["key"])
        if first is None:
            first = time.perf_counter() - start
    wall = time.perf_counter() - start
    return {"samples": n, "seconds": round(wall, 3), "first_batch_s": round(first or 0.0, 3),
            "samples_per_s": round(n / wall, 1), "per_worker": round(n / wall / workers, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
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
                          f"{r['samples_per_s']:7.1f} samples/s  "
                          f"{r['per_worker']:7.1f} per worker  (first batch {r['first_batch_s']}s)")
        finally:
            server.stop()
    print("\n| source | workers | samples/s | per worker | target |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['workers']} | {r['samples_per_s']} | {r['per_worker']} | "
              f"{'ok' if r['per_worker'] >= 150 else 'below'} (>= 150) |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{os.cpu_count()}-core CPU", "pipeline": "ms_B8: 224 px 3-level PNG pyramid, "
              "tokenize 150, MLM mask, collate, batch 64, mixup1 P30", "samples": args.samples, "rows": rows,
              "target_per_worker": 150}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
