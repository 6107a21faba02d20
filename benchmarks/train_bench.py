"""Training throughput: the project's whole step beside a plain PyTorch loop of the same model on the
same batches, in one process and one run.

    python benchmarks/train_bench.py --tiny       # CPU: 4 layers x 128 at 64 px, fp32 (ds_configs/cpu.json)
    python benchmarks/train_bench.py              # GPU: ms_B8 BERT-base UWOX, bf16 (ds_configs/zero2.json)
    python benchmarks/train_bench.py --micro 64 128 --modes compiled --stages 2 3 --activation-checkpointing

project: what `launchers/pretrain.py` runs: `pretrain.build` (model, loader with worker processes
         drawing the word and patch masks), `build_engine` with the shipped DeepSpeed config,
         `maybe_compile` (train.compile), the Trainer's step (`Trainer.train_step`, the loop of
         `Trainer.fit` without its log lines and checkpoints) with its device-side meter.
plain:   the same initial weights and the same batches (taken from the same loader beforehand, held
         in host memory, moved to the device each step as the project does), torch.optim.AdamW (fused
         on CUDA), gradient clipping as configured, bf16 autocast on CUDA; no DeepSpeed, no loader.
Both run eager and compiled (`torch.compile(dynamic=False)`, inductor). Each is timed over
--repeats windows of --steps optimizer steps after --warmup steps; the table shows the median
window. `graph_breaks` is torch._dynamo.explain's count for the compiled region (the model's
training forward + loss); `ratio_vs_plain` is project samples/s over plain samples/s, per mode.
Synthetic shards (noise images, word-salad reports; speed does not depend on pixel content) are
written once to --work with the real shard writer, and a tokenizer is trained on them.
Writes --out (JSON) and prints a table. Targets: CPU --tiny ratio >= 0.95; one H200, micro-batch
64 within 40 GiB at >= 620 samples/s (50% MFU), beside the plain reference (353 eager / 470
compiled samples/s measured for another plain implementation, TOOLCHAIN.md).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WORDS = ("heart size normal lungs clear no effusion pneumothorax mild atelectasis left base cardiomegaly "
         "edema opacity right lobe stable tubes lines consolidation pleural").split()
TINY = ["model.layers=4", "model.hidden=128", "model.heads=4", "model.intermediate=512",
        "model.image_size=64", "model.block_size=4", "model.vocab_size=2048"]


def _noise(seed: int, size: int):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


class NoiseInstitution:
    """`num` paired records with noise images and 40-120-word reports."""

    label_space = "chexpert14"

    def __init__(self, num: int, size: int):
        self.num, self.size, self.name = num, size, "bench"

    def __len__(self) -> int:
        return self.num

    def items(self, rejects):
        import numpy as np

        from mixvlp_ds.labels import CHEXPERT14
        from mixvlp_ds.shard.format import make_key
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


def run_config(args, micro: int, shards: Path, tok: Path):
    from mixvlp_ds.train.config import load_run_config

    overrides = [f"tokenizer={tok}", f"data.batch_size={micro}", f"train.batch_size={micro}",
                 f"data.sources=[{{name: bench, uri: '{shards}', role: paired}}]", "data.scenario=baseline",
                 "data.paired_percent=100", f"data.num_workers={args.workers}", "train.warmup_steps=1",
                 f"train.steps={args.warmup + args.repeats * args.steps}", "train.ckpt_every=1000000",
                 f"model.activation_checkpointing={str(args.activation_checkpointing).lower()}"]
    cfg = REPO / "configs" / ("tiny_cpu.yaml" if args.tiny else "uwox_ms_b8.yaml")
    return load_run_config(cfg, overrides + (TINY if args.tiny else []))


class Clock:
    """Window times over optimizer steps: a mark after the warmup and after each window."""

    def __init__(self, warmup: int, steps: int, cuda: bool):
        self.warmup, self.steps, self.cuda, self.marks = warmup, steps, cuda, []

    def __call__(self, step: int) -> None:
        if step >= self.warmup and (step - self.warmup) % self.steps == 0:
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.marks.append(time.perf_counter())

    def windows(self) -> list[float]:
        return [b - a for a, b in itertools.pairwise(self.marks)]


def project_run(args, run, info, ds_path: Path, compiled: bool) -> dict:
    """The launcher's path: build, build_engine, maybe_compile, the Trainer's steps (no log lines or
    checkpoints: they are not part of a step)."""
    import tempfile

    from mixvlp_ds.train.ds_config import load_ds_config
    from mixvlp_ds.train.engine import build_engine
    from mixvlp_ds.train.loop import batches_forever
    from mixvlp_ds.train.pretrain import build, maybe_compile, precision_support
    from mixvlp_ds.train.trainer import Trainer

    run = copy.deepcopy(run)
    run.train.compile = compiled
    run.train.output_dir = tempfile.mkdtemp(prefix="train_bench-")
    ds = load_ds_config(ds_path, run, 1, info.device.type, *precision_support(info.device))
    _, model, loader = build(run, info)
    engine = build_engine(model, ds, run.train)
    maybe_compile(engine, run.train, info.device, lambda m: None)
    trainer = Trainer(run, info, engine, loader)
    clock = Clock(args.warmup, args.steps, info.device.type == "cuda")
    batches = batches_forever(loader)
    engine.train()
    try:  # Trainer.fit's loop, with the clock where fit logs and checkpoints
        while trainer.state.step < run.train.steps:
            if trainer.train_step(next(batches)) == "applied":
                if trainer.state.step == run.train.steps:
                    trainer.meter.read()  # the one host read of the losses: the run's last step
                clock(trainer.state.step)
    finally:
        batches.close()
        loader.close()
    precision = "bf16" if ds["bf16"]["enabled"] else "fp16" if ds["fp16"]["enabled"] else "fp32"
    return {"windows": clock.windows(), "precision": precision}


def plain_run(args, run, info, model, batches: list[dict], compiled: bool, precision: str) -> dict:
    """The reference: a textbook PyTorch loop."""
    import torch

    from mixvlp_ds.data.batch import model_inputs

    cuda = info.device.type == "cuda"
    model = copy.deepcopy(model).to(info.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=run.train.lr, betas=run.train.betas, eps=run.train.eps,
                            weight_decay=run.train.weight_decay, fused=cuda)
    step_model = torch.compile(model, dynamic=False) if compiled else model
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    clock = Clock(args.warmup, args.steps, cuda)
    for step, batch in enumerate(batches, start=1):
        with autocast:
            out = step_model(model_inputs(batch, info.device))
        out["loss"].backward()
        if run.train.clip_grad:
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.clip_grad)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock(step)
    return {"windows": clock.windows(), "precision": precision}


def graph_breaks(run, info, batch: dict) -> int:
    import torch

    from mixvlp_ds.data.batch import model_inputs
    from mixvlp_ds.model import MixVLP

    torch._dynamo.reset()
    model = MixVLP(run.model).to(info.device).train()
    explained = torch._dynamo.explain(lambda b: model(b)["loss"])(model_inputs(batch, info.device))
    torch._dynamo.reset()
    return int(explained.graph_break_count)


def bench(args, stage: int, micro: int, shards: Path, tok: Path, info) -> list[dict]:
    import torch

    from mixvlp_ds.model import flops_per_sample
    from mixvlp_ds.train.ds_config import load_ds_config
    from mixvlp_ds.train.engine import peak_flops
    from mixvlp_ds.train.loop import batches_forever
    from mixvlp_ds.train.pretrain import build, precision_support

    run = run_config(args, micro, shards, tok)
    cuda = info.device.type == "cuda"
    # CUDA: the shipped zero<S>.json; CPU: --cpu-ds-config for stage 2 (cpu.json: fp32), zero<S>.json else
    ds_file = f"zero{stage}.json" if cuda or stage != 2 else args.cpu_ds_config
    ds_path = REPO / "ds_configs" / ds_file
    fps = flops_per_sample(run.model)
    ds = load_ds_config(ds_path, run, 1, info.device.type, *precision_support(info.device))
    precision = "bf16" if ds["bf16"]["enabled"] else "fp16" if ds["fp16"]["enabled"] else "fp32"
    _, model, loader = build(run, info)  # the plain loop's weights and batches: the project's own
    batches = list(itertools.islice(batches_forever(loader), run.train.steps))
    loader.close()
    rows = []
    for mode in args.modes:
        for path in ("project", "plain"):
            if path == "plain" and (args.no_plain or stage != args.stages[0]):
                continue
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            torch._dynamo.reset()
            row = {"path": path, "mode": mode, "stage": stage if path == "project" else None,
                   "micro_batch": micro, "activation_checkpointing": args.activation_checkpointing}
            try:
                if path == "project":
                    res = project_run(args, run, info, ds_path, mode == "compiled")
                else:
                    res = plain_run(args, run, info, model, batches, mode == "compiled", precision)
            except torch.cuda.OutOfMemoryError:
                rows.append({**row, "error": "OOM"})
                continue
            window = statistics.median(res["windows"])
            sps = args.steps * micro / window
            peak = peak_flops(info.device, res["precision"])
            rows.append({**row, "precision": res["precision"], "samples_per_s": round(sps, 2),
                         "step_ms": round(1000 * window / args.steps, 2),
                         "windows_s": [round(w, 4) for w in res["windows"]],
                         "tflops": round(sps * fps / 1e12, 3),
                         "mfu": round(sps * fps / peak, 4) if peak else None,
                         "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda
                         else None})
    return rows


def ratios(rows: list[dict]) -> dict:
    out = {}
    for mode in ("eager", "compiled"):
        done = [r for r in rows if r["mode"] == mode and "samples_per_s" in r]
        plain = next((r for r in done if r["path"] == "plain"), None)
        proj = [r for r in done if r["path"] == "project" and plain is not None
                and r["micro_batch"] == plain["micro_batch"]]
        if plain and proj:
            out[mode] = round(proj[0]["samples_per_s"] / plain["samples_per_s"], 3)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="4 x 128 model at 64 px (the CPU benchmark)")
    p.add_argument("--micro", type=int, nargs="+", default=None, help="micro-batch sizes (CPU 16, GPU 64)")
    p.add_argument("--stages", type=int, nargs="+", default=[2], help="ZeRO stages (ds_configs/zero<S>.json)")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per timed window (10)")
    p.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--warmup", type=int, default=None, help="steps before timing (CPU 3, GPU 5)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers (CPU 1, GPU 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU compute threads (default: cores - workers)")
    p.add_argument("--samples", type=int, default=None, help="synthetic records to write (CPU 512, GPU 2048)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--no-plain", action="store_true", help="project rows only")
    p.add_argument("--cpu-ds-config", default="cpu.json", help="CPU stage 2: cpu.json / zero2.json")
    p.add_argument("--work", default="/tmp/train_bench")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train_bench.json"))
    args = p.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu"
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    args.micro = args.micro or ([16] if not cuda else [64])
    args.steps = args.steps or 10
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 3)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 1)
    args.samples = args.samples or (2048 if cuda else 512)
    if not cuda:  # the loader's workers need cores of their own, or they slow the step they feed
        args.threads = args.threads or max(1, (os.cpu_count() or 2) - args.workers)
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from mixvlp_ds.train.engine import init_distributed, standalone_env

    os.environ.update(standalone_env())
    info = init_distributed()
    size = 64 if args.tiny else 224
    shards, tok = prepare(Path(args.work), size, args.samples)
    run0 = run_config(args, args.micro[0], shards, tok)
    from mixvlp_ds.train.loop import batches_forever
    from mixvlp_ds.train.pretrain import build

    _, _, loader = build(run0, info)
    first = next(batches_forever(loader))
    loader.close()
    breaks = graph_breaks(run0, info, first)
    rows = [r for s in args.stages for m in args.micro for r in bench(args, s, m, shards, tok, info)]
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "device": torch.cuda.get_device_name() if cuda else "cpu",
                          "torch": torch.__version__, "threads": torch.get_num_threads()},
              "model": "tiny 4x128 @ 64 px" if args.tiny else "ms_B8 BERT-base UWOX",
              "num_patches": run0.model.num_patches, "args": vars(args), "graph_breaks": breaks,
              "ratio_vs_plain": ratios(rows), "rows": rows}
    print_table(result)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"train_bench: {result['model']} on {result['machine']['device']}  graph breaks "
                    f"{result['graph_breaks']}  project/plain {result['ratio_vs_plain']}")
    cols = ("path", "mode", "stage", "micro_batch", "precision", "samples_per_s", "step_ms", "tflops", "mfu",
            "peak_mem_gib", "error")
    for c in cols:
        t.add_column(c)
    for r in result["rows"]:
        t.add_row(*(str(r.get(c, "")) for c in cols))
    Console().print(t)


if __name__ == "__main__":
    main()
