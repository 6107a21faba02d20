"""Elastic checkpoints at the real model's size: bytes per rank and seconds, beside DeepSpeed's own.

    python benchmarks/elastic_ckpt.py                       # ms_B8 BERT-base UWOX, zero2.json (bf16)
    python benchmarks/elastic_ckpt.py --ds ds_configs/zero3.json --out benchmarks/results/elastic_zero3.json

One process (DeepSpeed's CPU accelerator without a GPU). With the Adam state a first step creates
(zero moments: the sizes are those of any later step) it times, each on a fresh folder:
    reference: engine.save_checkpoint / engine.load_checkpoint (DeepSpeed's ZeRO files: same world only)
    elastic:   universal.save_elastic / universal.load_elastic into a fresh engine (any world, any stage)
and lists the files' bytes. With N ranks each rank writes its share of elastic/ (dealt by size;
`shares_for` below gives the largest share for N = 2 .. 64 from the model's parameter sizes) and
reads all of it at a load. Writes --out (JSON) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def shares_for(numels: list[int], worlds=(2, 4, 8, 16, 32, 64)) -> dict[int, int]:
    """Largest elastic share (bytes of fp32 weight + 2 moments) per rank for each world size."""
    from mixvlp_ds.train.universal import deal

    out = {}
    for n in worlds:
        load = [0] * n
        for i, r in enumerate(deal(numels, n)):
            load[r] += numels[i]
        out[n] = 12 * max(load)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "uwox_ms_b8.yaml"))
    p.add_argument("--ds", default=str(REPO / "ds_configs" / "zero2.json"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "elastic_ckpt.json"))
    p.add_argument("--work", default="")
    args = p.parse_args(argv)

    from mixvlp_ds.train.engine import standalone_env

    os.environ.update(standalone_env())
    import torch

    from mixvlp_ds.model import MixVLP
    from mixvlp_ds.train.config import load_run_config
    from mixvlp_ds.train.ds_config import load_ds_config
    from mixvlp_ds.train.engine import build_engine, init_distributed
    from mixvlp_ds.train.pretrain import precision_support
    from mixvlp_ds.train.universal import load_elastic, save_elastic
    from mixvlp_ds.train.zero_state import ensure_adam_state

    info = init_distributed()
    run = load_run_config(args.config, ["data.batch_size=1", "train.batch_size=1", "train.steps=10",
                                        "tokenizer=unused"])
    ds = load_ds_config(args.ds, run, 1, info.device.type, *precision_support(info.device))

    def engine():
        torch.manual_seed(0)
        return build_engine(MixVLP(run.model), ds, run.train)

    work = Path(args.work or tempfile.mkdtemp(prefix="elastic_bench_"))
    first = engine()
    ensure_adam_state(first)  # the Adam state of a first step (zeros): both formats then hold it
    numels = [p.numel() for p in first.module.parameters() if p.requires_grad]
    rows = []

    def timed(name, fn, folder):
        t0 = time.perf_counter()
        fn()
        rows.append({"what": name, "seconds": round(time.perf_counter() - t0, 2),
                     "bytes": folder_bytes(folder) if folder.exists() else 0})

    ref, el = work / "reference", work / "elastic"
    timed("reference save (DeepSpeed ZeRO files)", lambda: first.save_checkpoint(str(ref), tag="t"), ref)
    timed("elastic save (elastic/)", lambda: save_elastic(first, el, 0, 1), el / "elastic")
    second = engine()
    timed("reference load", lambda: second.load_checkpoint(str(ref), tag="t"), ref)
    third = engine()
    timed("elastic load (fresh engine)", lambda: load_elastic(third, el), el / "elastic")
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
              "torch": torch.__version__, "config": args.config, "ds_config": args.ds,
              "bf16": bool(ds.get("bf16", {}).get("enabled")), "parameters": sum(numels), "rows": rows,
              "elastic_bytes_per_rank_largest_share": shares_for(numels)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"{result['parameters'] / 1e6:.1f} M parameters, {Path(args.ds).name}, {result['machine']}")
    print(f"{'what':42s} {'seconds':>8s} {'MB':>9s}")
    for r in rows:
        print(f"{r['what']:42s} {r['seconds']:8.2f} {r['bytes'] / 1e6:9.1f}")
    shares = result["elastic_bytes_per_rank_largest_share"]
    listed = ", ".join(f"N={n}: {b / 1e6:.0f}" for n, b in shares.items())
    print(f"elastic/ largest share per rank (MB): {listed}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
