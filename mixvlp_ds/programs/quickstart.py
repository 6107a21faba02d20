"""The README's main job: the whole story on the embedded synthetic institutions, on a CPU.

    python -m mixvlp_ds quickstart [--out runs/quickstart] [--shards shards] [--steps 1500] [--seed 0]
    python -m mixvlp_ds quickstart --long      # the budget where pair matching reaches 0.75 (~7 min)

1. draws three synthetic institutions (mimic-like: paired; nih-like: image-only; openi-like: the
   labelled test institution, half of it for fine-tuning), findings at conspicuity 3, and writes
   them as WebDataset shards (32 px pyramids);
2. trains a WordPiece tokenizer on the mimic-like training reports;
3. pre-trains a tiny UWOX model with the Mix-up 2 sampler (configs/quickstart_pretrain.yaml);
4. fine-tunes and evaluates classification (AUC) and hash retrieval (P@K) on openi-like, and the
   same classification from random initialisation;
5. evaluates patch regeneration (MSE/PSNR/SSIM) on its test images beside the neighbour-mean fill
   and the upsampled coarse level;
6. scores openi-like's test images with no labels through the pair head: zero-shot classification
   and image <-> report retrieval, and the same through random weights (apps/zeroshot.py);
7. with --label-efficiency (on with --long): fine-tunes the pre-trained and the random-init model
   at 5%, 20% and 100% of the fine-tuning rows, three draws each (apps/label_efficiency.py);
then prints the tables, and each objective beside its reference on the same rows (apps/objectives.py:
also <out>/summary.json), and says where the results, plots and checkpoints are.

Every step is skipped when its output is already there, so a second run only prints.

What it prints (mixvlp_ds/stage_progress.py): each stage is one progress display, and everything the
stage's programs print (a line per fine-tuning epoch and head, pre-training's step lines, shard
summaries, the intermediate tables) goes to its log, <out>/logs/<n>-<stage>.log, appended per run.
On a terminal each stage is one rich progress bar (percent, elapsed, ETA, the latest log line) that
stays on the screen when the stage ends. Without a terminal (CI, nohup, a pipe) a stage prints a
header line, a progress line per further 10% at most every 10 seconds, and an end line with its time
and the last line of its log (e.g. "already written" when it was skipped). The tables at the end are
printed the same in both cases.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mixvlp_ds.cpu_kernels import pin_cpu_kernels
from mixvlp_ds.shipped import folder

CONFIGS = folder("configs")  # shipped with the package (mixvlp_ds.shipped)
# (preset, records, train/val/test shares or None for the preset's own); docs/synthetic_results.md,
# "The main job (2026-12-02)": 4000 mimic-like records lift pair matching from 0.63 (1200, test rows)
# to 0.73 (val 0.726); half of openi-like is the fine-tuning set (596 rows, 162 before).
INSTITUTIONS = (("mimic-like", 4000, None), ("nih-like", 800, None), ("openi-like", 1200, (0.5, 0.1, 0.4)))
IMAGE_SIZE = 32  # the tiny model's image size (configs/quickstart_pretrain.yaml)
CONSPICUITY = 3.0  # findings drawn 3x as strong as findings.py's default (docs/synthetic_results.md)
# --long: the opt-in budget where pair matching reaches its 0.75 target (docs/synthetic_results.md,
# "Pair matching"): twice the mimic-like pairs, twice the steps, L_co weighted 10 instead of 3
LONG = {"mimic-like": 8000, "steps": 3000, "weight_co": 10.0}
BUDGETS = (5.0, 20.0, 100.0)  # --label-efficiency: percent of openi-like's fine-tuning rows, by patient
PRETRAIN_CONFIG = "quickstart_pretrain.yaml"
FINETUNE_CONFIG = "quickstart_finetune.yaml"


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def write_shards(root: Path, workers: int, scale: float = 1.0, conspicuity: float = CONSPICUITY,
                 counts: dict[str, int] | None = None) -> dict[str, Path]:
    """The three institutions under `root` (records per preset: INSTITUTIONS, or `counts`). A folder
    already written with other records, conspicuity or shares is refused, not silently reused."""
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.shard.sources.synthetic import SyntheticSource

    out = {}
    for preset, num, splits in INSTITUTIONS:
        num = max(20, round((counts or {}).get(preset, num) * scale))
        d = root / preset
        out[preset] = d
        wanted = {"preset": preset, "num": num, "conspicuity": conspicuity,
                  "split_shares": list(splits) if splits else None}
        if (d / "index.json").is_file():
            had = json.loads((d / "index.json").read_text()).get("args", {}).get("source_args", {})
            if {k: had.get(k) for k in wanted} != wanted:
                raise SystemExit(f"error: {d} holds other synthetic records ({had}); this run needs "
                                 f"{wanted}. Give another --shards folder, or delete this one.")
            print(f"{d}: already written")
            continue
        source = SyntheticSource(preset=preset, num=num, seed=0, institution=preset, splits=splits,
                                 conspicuity=conspicuity)
        opts = ShardOptions(image_size=IMAGE_SIZE, shard_max_samples=100, workers=workers, progress=True,
                            institution=preset,
                            source_args=wanted)
        summary = write_dataset(source, d, opts)
        print(f"{d}: {json.dumps(summary.get('splits', summary), default=str)[:300]}")
    return out


def train_tokenizer(shards: Path, out: Path) -> Path:
    from mixvlp_ds.text.tokenizer import iter_shard_texts, train_tokenizer

    if (out / "tokenizer.json").is_file():
        print(f"{out}: already trained")
    else:
        tok = train_tokenizer(iter_shard_texts([shards]), out, vocab_size=512)
        print(f"{out}: {len(tok)} tokens")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds quickstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="run folder (checkpoints, results, plots; default "
                   "runs/quickstart, runs/quickstart-long with --long)")
    p.add_argument("--shards", default=None, help="where the synthetic shard folders go (default shards, "
                   "shards-long with --long)")
    p.add_argument("--steps", type=int, default=None, help="pre-training optimizer steps (default 1500, "
                   "3000 with --long)")
    p.add_argument("--long", action="store_true", help="the budget where pair matching reaches 0.75 AUC: "
                   f"{LONG['mimic-like']} mimic-like records, {LONG['steps']} steps, L_co weight "
                   f"{LONG['weight_co']:g} (~7 minutes on a 2-core CPU)")
    p.add_argument("--workers", type=int, default=2, help="processes for sharding")
    p.add_argument("--scale", type=float, default=1.0, help="scale the synthetic record counts")
    p.add_argument("--conspicuity", type=float, default=CONSPICUITY,
                   help="scale of the synthetic findings' signatures "
                   "(1: the subtle default of --source synthetic)")
    budgets = ", ".join(f"{b:g}%%" for b in BUDGETS)  # %% : argparse formats help strings
    p.add_argument("--label-efficiency", action="store_true", help="also fine-tune the pre-trained and "
                   f"the random-init model at {budgets} of the labelled rows, three draws each (~5 more "
                   "minutes; on with --long)")
    p.add_argument("--seed", type=int, default=0, help="training seed: pre-training and fine-tuning "
                   "(the synthetic institutions stay the same)")
    args = p.parse_args(argv)
    long = args.long
    out = Path(args.out or ("runs/quickstart-long" if long else "runs/quickstart"))
    steps = args.steps or (LONG["steps"] if long else 1500)
    t0 = time.time()
    # Tiny models gain nothing from more threads, and on a busy machine OpenMP threads spin-wait
    # on each other (measured: 24 CPU-minutes for this job with 2 threads beside another job).
    # Set before torch is first imported; an OMP_NUM_THREADS from the user wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    pin_cpu_kernels()   # the same kernels (AVX2) on every x86-64 machine: the same figures on each

    # one progress bar (a terminal) or a few plain lines per stage; the detail in <out>/logs/
    from mixvlp_ds.stage_progress import over, stage

    logs = out / "logs"
    print(f"logs of each stage: {logs}", flush=True)
    with stage("1/7 shards", len(INSTITUTIONS), logs / "1-shards.log", "synthetic institutions -> shards"):
        root = Path(args.shards or ("shards-long" if long else "shards"))
        shards = write_shards(root, args.workers, args.scale, args.conspicuity,
                              {"mimic-like": LONG["mimic-like"]} if long else None)

    with stage("2/7 tokenizer", None, logs / "2-tokenizer.log", "WordPiece on the mimic-like reports"):
        tok = train_tokenizer(shards["mimic-like"], out / "tokenizer")

    with stage("3/7 pre-training", 1, logs / "3-pretrain.log",
               "tiny UWOX, Mix-up 2 (mimic-like pairs + nih-like images with random reports)"):
        from mixvlp_ds.train.pretrain import pretrain_once

        model_dir, _ = pretrain_once(CONFIGS / PRETRAIN_CONFIG, out / "pretrain",
                                     [f"tokenizer={tok}", f"train.steps={steps}", "train.log_every=50",
                                      f"train.seed={args.seed}",
                                      *([f"model.weight_co={LONG['weight_co']}"] if long else []),
                                      *source_overrides(shards)])

    from mixvlp_ds.apps.finetune import main as finetune
    from mixvlp_ds.programs.evaluate import main as evaluate

    results = {}
    for task, init, name in (("cls", model_dir, "cls"), ("retrieval", model_dir, "retrieval"),
                             ("cls", "", "cls_scratch")):
        what = "from random initialisation (the reference)" if not init else "from the pre-trained model"
        d = out / f"finetune_{name}"
        with stage(f"4/7 fine-tune {name}", 1, logs / f"4-finetune_{name}.log",
                   f"fine-tune + evaluate on openi-like: {task}, {what}"):
            if not (d / "results.json").is_file():
                # from scratch: the config's model_preset / model_arch (the pre-trained model's sizes)
                scratch = [] if init else [f"tokenizer={model_dir / 'tokenizer'}"]
                finetune(["--config", str(CONFIGS / FINETUNE_CONFIG), "--task", task, "--init", str(init),
                          f"shards={shards['openi-like']}", f"output_dir={d}", f"seed={args.seed}", *scratch])
            else:
                print(f"{d}: already written")
        results[name] = d

    d = out / "regen"
    with stage("5/7 regeneration", None, logs / "5-regen.log", "patch regeneration on openi-like test "
               "images"):
        if not (d / "results.json").is_file():
            evaluate(["--task", "regen", "--checkpoint", str(model_dir), "--shards",
                      str(shards["openi-like"]), "--split", "test", "--num-images", "64", "--grids", "4",
                      "--out", str(d)])
        else:
            print(f"{d}: already written")
    results["regen"] = d

    with stage("6/7 zero-shot", 1, logs / "6-zeroshot.log", "no labels: zero-shot classification and "
               "image <-> report retrieval through the pair head"):
        for task in over(("zeroshot", "report_retrieval")):
            d = out / task
            if not (d / "results.json").is_file():
                evaluate(["--task", task, "--model", str(model_dir), "--random-init", "--shards",
                          str(shards["openi-like"]), "--out", str(d)])
            else:
                print(f"{d}: already written")
            results[task] = d

    efficiency = None
    if args.label_efficiency or long:
        from mixvlp_ds.apps.finetune import FinetuneConfig
        from mixvlp_ds.apps.label_efficiency import efficiency_table, label_efficiency
        from mixvlp_ds.config import load_config

        d = out / "label_efficiency"
        with stage("7/7 label efficiency", len(BUDGETS) * 2 * 3, logs / "7-label_efficiency.log",
                   f"pre-trained vs random init at {', '.join(f'{b:g}%' for b in BUDGETS)} of the "
                   "labelled rows"):
            base = load_config(FinetuneConfig, str(CONFIGS / FINETUNE_CONFIG), [f"seed={args.seed}"])
            efficiency = label_efficiency(base, model_dir, d, BUDGETS, 3,
                                          reuse={"pretrained": out / "finetune_cls",
                                                 "scratch": out / "finetune_cls_scratch"})
        print(efficiency_table(efficiency))
    else:
        step("7/7 label efficiency: skipped (--label-efficiency or --long runs it)")

    step("results")
    for name, d in results.items():
        print(f"\n## {name}  ({d / 'results.json'})\n")
        print((d / "results.md").read_text())
    from mixvlp_ds.apps.objectives import objectives_table, summarize

    summary = summarize(out, str(shards["openi-like"]), model_dir, time.time() - t0, efficiency)
    print(f"\n## each objective beside its reference  ({out / 'summary.json'})\n")
    print(objectives_table(summary))
    print(f"checkpoints: {out / 'pretrain' / 'checkpoints'}   exported model: {model_dir}")
    print(f"plots: {sorted(str(p) for p in out.rglob('*.png'))[:6]} ...")
    print(f"metrics log: {out / 'pretrain' / 'metrics.jsonl'}   total time: {time.time() - t0:.0f} s")


def source_overrides(shards: dict[str, Path]) -> list[str]:
    """Point the pre-training config's sources (0: mimic-like, 1: nih-like) at the folders written here."""
    return [f"data.sources.0.uri={shards['mimic-like']}", f"data.sources.1.uri={shards['nih-like']}"]


if __name__ == "__main__":
    from mixvlp_ds.status import run

    sys.exit(run(main))
