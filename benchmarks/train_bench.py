"""Training throughput and memory: the real engine, loop and data pipeline, per micro-batch and ZeRO stage.

    python benchmarks/train_bench.py                          # GPU: ms_B8 UWOX, micro 16/32/64, ZeRO 2 and 3
    python benchmarks/train_bench.py --micro 64 128 --activation-checkpointing
    python benchmarks/train_bench.py --tiny                   # CPU smoke run: tiny model, fp32

Synthetic shards (noise images, word-salad reports) are written once to --work (default
/tmp/train_bench) with the real shard writer, and a tokenizer is trained on them; nothing is
downloaded. One process (world size 1). For each (stage, micro-batch) the script builds the model,
the DeepSpeed engine and the loader, runs --warmup steps, then times --steps steps and reports
samples/s, TFLOP/s (model.flops_per_sample), MFU against the card's bf16 peak, and peak memory.
Prints a table and writes JSON (--out). Goal on one H100/H200: micro-batch 64 of ms_B8 fits in
80 GB in bf16, at least 353 samples/s (the eager plain-PyTorch reference; 470 with torch.compile).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORDS = ("heart size normal lungs clear no effusion pneumothorax mild atelectasis left base cardiomegaly "
         "edema opacity right lobe stable tubes lines consolidation pleural").split()


def _noise(seed: int, size: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


class NoiseInstitution:
    """`num` paired records with noise images (speed does not depend on pixel content)."""

    label_space = "chexpert14"

    def __init__(self, num: int, size: int):
        self.num, self.size, self.name = num, size, "bench"

    def __len__(self) -> int:
        return self.num

    def items(self, rejects):
        import numpy as np

        from mixvlp_ds.shard.format import CHEXPERT14, make_key
        from mixvlp_ds.shard.source import SourceItem

        rng = np.random.default_rng(0)
        for i in range(self.num):
            yield SourceItem(key=make_key("bench", f"s{i}", f"im{i}"),
                             meta={"institution": "bench", "patient_id": f"p{i}", "study_id": f"s{i}",
                                   "view": "PA", "split": "train"},
                             text=" ".join(rng.choice(WORDS, size=int(rng.integers(40, 120)))),
                             labels={n: None for n in CHEXPERT14},
                             image_fn=functools.partial(_noise, i, self.size))


def prepare(work: Path, size: int, num: int) -> tuple[Path, Path]:
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.text.tokenizer import iter_shard_texts, train_tokenizer

    shards, tok = work / f"shards-{size}-{num}", work / "tokenizer"
    if not (shards / "index.json").is_file():
        write_dataset(NoiseInstitution(num, size), shards,
                      ShardOptions(image_size=size, shard_max_samples=64, workers=os.cpu_count() or 1))
    if not (tok / "tokenizer.json").is_file():
        train_tokenizer(iter_shard_texts([shards]), tok, vocab_size=2000, min_frequency=1)
    return shards, tok


def bench_one(args, stage: int, micro: int, shards: Path, tok: Path) -> dict:
    import torch

    from mixvlp_ds.model import flops_per_sample
    from mixvlp_ds.train.config import load_run_config
    from mixvlp_ds.train.ds_config import load_ds_config
    from mixvlp_ds.train.engine import build_engine, init_distributed, peak_flops
    from mixvlp_ds.train.loop import LoopState, train
    from mixvlp_ds.train.pretrain import build

    info = init_distributed()
    cfg = REPO / "configs" / ("tiny_cpu.yaml" if args.tiny else "uwox_ms_b8.yaml")
    total = args.warmup + args.steps
    run = load_run_config(cfg, [f"tokenizer={tok}", f"data.batch_size={micro}", f"train.batch_size={micro}",
                                f"data.sources=[{{name: bench, uri: '{shards}', role: paired}}]",
                                "data.scenario=baseline", "data.paired_percent=100",
                                f"data.num_workers={args.workers}", f"train.steps={total}",
                                "train.warmup_steps=1",
                                f"model.activation_checkpointing={str(args.activation_checkpointing).lower()}"])
    ds_file = "cpu.json" if info.device.type == "cpu" else f"zero{stage}.json"
    ds = load_ds_config(REPO / "ds_configs" / ds_file, run, 1, info.device.type,
                        info.device.type == "cuda" and torch.cuda.is_bf16_supported())
    ds.setdefault("zero_optimization", {})["stage"] = stage
    row = {"stage": stage, "micro_batch": micro, "device": str(info.device),
           "precision": "bf16" if ds["bf16"]["enabled"] else "fp32",
           "activation_checkpointing": args.activation_checkpointing}
    cuda = info.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    marks = {}
    try:
        tokenizer, model, loader = build(run, info)
        engine = build_engine(model, ds, run.train)

        def on_step(st, vec):
            if st.step in (args.warmup, total):
                if cuda:
                    torch.cuda.synchronize()
                marks[st.step] = time.perf_counter()

        train(engine, loader, LoopState(), total, 1000, run.model.num_patches, on_step, lambda b: None)
        dt = marks[total] - marks[args.warmup]
        sps = args.steps * micro / dt
        fps = flops_per_sample(run.model)
        peak = peak_flops(info.device, row["precision"])
        row.update(samples_per_s=round(sps, 2), tflops=round(sps * fps / 1e12, 2),
                   mfu=round(sps * fps / peak, 4) if peak else None, gflop_per_sample=round(fps / 1e9, 1),
                   peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
    except torch.cuda.OutOfMemoryError:
        row.update(samples_per_s=None, error="OOM")
    finally:
        engine = model = loader = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model and 32 px shards (CPU smoke run)")
    p.add_argument("--micro", type=int, nargs="+", default=None, help="micro-batch sizes (default 16 32 64)")
    p.add_argument("--stages", type=int, nargs="+", default=None, help="ZeRO stages (default 2 3; CPU: 2)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workers", type=int, default=6, help="data loader workers")
    p.add_argument("--samples", type=int, default=1024, help="synthetic records to write")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--work", default="/tmp/train_bench")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_bench.json"))
    args = p.parse_args(argv)
    import torch

    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    micro = args.micro or ([4, 8] if args.tiny else [16, 32, 64])
    stages = args.stages or ([2] if cpu else [2, 3])
    shards, tok = prepare(Path(args.work), 32 if args.tiny else 224, args.samples)
    rows = [bench_one(args, s, m, shards, tok) for s in stages for m in micro]
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"train_bench ({'tiny' if args.tiny else 'ms_B8 UWOX'}, {rows[0]['device']})")
    for c in ("stage", "micro_batch", "precision", "samples_per_s", "tflops", "mfu", "peak_mem_gib", "error"):
        t.add_column(c)
    cols = ("stage", "micro_batch", "precision", "samples_per_s", "tflops", "mfu", "peak_mem_gib", "error")
    for r in rows:
        t.add_row(*(str(r.get(c, "")) for c in cols))
    Console().print(t)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
