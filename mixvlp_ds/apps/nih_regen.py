"""Regeneration of held-out REAL radiographs: NIH ChestX-ray14 images of test patients regenerated
by a model pre-trained on synthetic nih-like images + the training patients' NIH images.

    python -m mixvlp_ds.apps.nih_regen --out runs/nih_regen                # the whole result, ~15 CPU-min
    python -m mixvlp_ds.apps.nih_regen --out runs/x train.steps=50          # key=value: run-config overrides

One command, five steps, each skipped when its output is already there (so a re-run only
evaluates again; `--fresh` redoes everything):

1. shards: the shard pipeline (`mixvlp_ds.shard.pipeline.write_dataset`) with the nih source on
   `<nih-dir>` (the 621 `images_512` JPEGs, patient-hash split train/val/test) and the synthetic
   nih-like preset, both at the run config's image size (the same shards as `python -m
   mixvlp_ds.shard --source nih` / `--source synthetic --preset nih-like`; summary.json records
   those commands);
2. a held-out check: no patient of the evaluated split has an image in the training split
   (pre-training reads `split: train` only), else it stops;
3. a tokenizer (UWOX has a text embedding; image-only rows never use it);
4. pre-training: `mixvlp_ds.train.pretrain.pretrain_once` on `configs/nih_regen_pretrain.yaml`,
   its sources pointed at the shards by overrides (the command is in summary.json);
5. evaluation on the held-out split: the model row is `mixvlp_ds.apps.regeneration.eval_regen` (the
   code of `python -m mixvlp_ds evaluate --task regen`), beside two references that need no training,
   scored on the same images with the same masks:
   - `coarse level upsampled`: the half-resolution level of the pyramid, bilinearly upsampled. The
     multi-scale model sees this level intact while regenerating (only the finest level is
     masked), so a model that beats it has learnt more than interpolation;
   - `neighbour mean`: each masked 8 px patch filled with the mean of its visible 8-neighbour
     patches (the same 7 disjoint masks as the model).

Writes `<out>/results.json`, `<out>/results.md`, grids `original | regenerated | |error|`
(`<out>/grids/ms_B<b>/NNN.png`) and comparison grids `original | model | coarse upsampled |
neighbour mean | |model error|` (`<out>/grids/compare/NNN.png`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mixvlp_ds.apps.regeneration import RegenOptions, eval_regen, reference_table
from mixvlp_ds.shipped import folder

DEFAULT_CONFIG = folder("configs") / "nih_regen_pretrain.yaml"


# ----------------------------------------------------------------------------- figures
def compare_grid(columns: list[np.ndarray], path: Path, zoom: int = 2) -> Path:
    """One PNG of equally sized uint8 images side by side (nearest-neighbour zoom, 4 px gaps)."""
    from PIL import Image

    gap = np.full((columns[0].shape[0], 4), 255, np.uint8)
    row = np.concatenate([c for col in columns for c in (col, gap)][:-1], axis=1)
    row = row.repeat(zoom, 0).repeat(zoom, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(row, mode="L").save(path)
    return path


# ----------------------------------------------------------------------------- steps
def write_shards(nih_dir: Path, nih_images: str, shards: Path, image_size: int, synthetic_num: int,
                 seed: int) -> dict:
    """The two shard folders through the shard pipeline's API (`write_dataset`; skipped when
    index.json exists), written and recorded exactly as the shard command with the same options
    would. Returns {name: {"dir", "command"}}: "command" is that shard command."""
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.shard.sources.nih import NIHSource
    from mixvlp_ds.shard.sources.synthetic import SyntheticSource

    # (source, its options as index.json records them, the seed, the equivalent command's options)
    jobs = {
        "nih": (lambda: NIHSource(nih_dir, image_glob=nih_images),
                {"source": "nih", "nih_dir": str(nih_dir), "nih_images": nih_images, "nih_metadata": None,
                 "nih_split_lists": None, "nih_test_fraction": 0.2, "nih_val_fraction": 0.1}, 0,
                ["--source", "nih", "--nih-dir", str(nih_dir), "--nih-images", nih_images]),
        "nih-like": (lambda: SyntheticSource("nih-like", num=synthetic_num, seed=seed),
                     {"source": "synthetic", "preset": "nih-like", "num": synthetic_num, "conspicuity": 1.0,
                      "split_shares": None}, seed,
                     ["--source", "synthetic", "--preset", "nih-like", "--num", str(synthetic_num),
                      "--seed", str(seed)]),
    }
    done = {}
    for name, (make_source, source_args, source_seed, argv) in jobs.items():
        out = shards / f"{name}-{image_size}"
        if not (out / "index.json").is_file():
            opts = ShardOptions(image_size=image_size, workers=os.cpu_count() or 1, seed=source_seed,
                                source_args=source_args)
            write_dataset(make_source(), out, opts)
        index = json.loads((out / "index.json").read_text())
        if int(index["image_size"]) != image_size:
            raise ValueError(f"{out}: written at {index['image_size']} px, the run needs {image_size} px "
                             "(delete the folder or use --fresh)")
        argv = [*argv, "--image-size", str(image_size), "--out", str(out)]
        done[name] = {"dir": str(out), "command": "python -m mixvlp_ds.shard " + " ".join(argv)}
    return done


def held_out_check(nih_shards: str, split: str) -> dict:
    """Patients of `split` vs the pre-training split `train`: must not overlap."""
    from mixvlp_ds.data.reader import iter_samples

    def patients(s: str) -> list[str]:
        return [r["patient_id"] for r in iter_samples(nih_shards, s) if r["pyramid"] is not None]

    train, held = patients("train"), patients(split)
    shared = sorted(set(train) & set(held))
    if shared:
        raise RuntimeError(f"{nih_shards}: {len(shared)} patient(s) of split {split!r} also in train "
                           f"(e.g. {shared[:3]}): the evaluation would not be held out")
    return {"train_images": len(train), "train_patients": len(set(train)), "eval_split": split,
            "eval_images": len(held), "eval_patients": len(set(held)), "shared_patients": 0}


def make_tokenizer(out: Path) -> str:
    """A small WordPiece vocabulary from synthetic reports: UWOX builds a text embedding, which
    image-only rows never use (so its content does not affect the result)."""
    from mixvlp_ds.shard.sources.synthetic import SyntheticSource
    from mixvlp_ds.text.tokenizer import train_tokenizer

    if not (out / "tokenizer.json").is_file():
        texts = [it.text for it in SyntheticSource("mimic-like", num=200).items(None)]
        train_tokenizer(texts, out, vocab_size=512)
    return str(out)


def pretrain(config: Path, out: Path, shards: dict, tokenizer: str, overrides: list[str]) -> tuple[Path, str]:
    """Pre-train on this run's shards (`pretrain_once`, skipped when <out>/pretrain/model exists):
    the config's sources pointed at them by overrides. Returns (model dir, the command line)."""
    from mixvlp_ds.config import read_file
    from mixvlp_ds.train.pretrain import pretrain_once

    uris = {"nih": shards["nih"]["dir"], "nih-like": shards["nih-like"]["dir"]}
    sources = [f"data.sources.{i}.uri={uris[src['name']]}"
               for i, src in enumerate(read_file(config)["data"]["sources"])]
    return pretrain_once(config, out / "pretrain", [f"tokenizer={tokenizer}", *sources, *overrides],
                         log=lambda m: print(f"[nih_regen] {m}", flush=True))


def evaluate(model_dir: Path, nih_shards: str, split: str, out: Path, opts: RegenOptions) -> dict:
    """The model beside the two references on the same held-out images and masks (eval_regen), and
    the comparison grids. `opts.num_images` 0 = every image of the split."""
    res = eval_regen(str(model_dir), nih_shards, split, out,
                     dataclasses.replace(opts, num_images=opts.num_images or 10**9))
    grids = opts.grids
    arr = res.pop("images")
    err = np.abs(arr["original"].astype(np.int16) - arr["model"].astype(np.int16)).astype(np.uint8)
    compare = [str(compare_grid([arr["original"][k], arr["model"][k], arr["coarse"][k],
                                 arr["neighbour"][k], err[k]], out / "grids" / "compare" / f"{k:03d}.png"))
               for k in range(min(grids, len(err)))]
    return {"variant": res["variant"], "image_size": res["image_size"], "block_size": res["block_size"],
            "n": res["n"], "keys": res["keys"], "rows": res["rows"], "grids": res["grids"],
            "compare_grids": compare}


def main(argv: list[str] | None = None) -> dict:
    """The program: its options, then the steps of the module doc in order (each skipped when its
    output exists). Long on purpose: half of it is the argument list."""
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds.apps.nih_regen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nih-dir", type=Path, required=True,
                   help="NIH ChestX-ray14 folder (Data_Entry_2017.csv, the split lists, image folders; "
                        "https://nihcc.app.box.com/v/ChestXray-NIHCC; test data: data/real/nih_cxr14)")
    p.add_argument("--nih-images", default="images_512", help="glob of image folders under --nih-dir")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--out", type=Path, default=Path("runs/nih_regen"))
    p.add_argument("--synthetic-num", type=int, default=1000, help="synthetic nih-like records")
    p.add_argument("--split", default="test", help="held-out NIH split to regenerate")
    p.add_argument("--num-images", type=int, default=0, help="0 = every image of the split")
    p.add_argument("--grids", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared CPU)")
    p.add_argument("--fresh", action="store_true", help="delete <out> first (no step is skipped)")
    p.add_argument("overrides", nargs="*", help="run-config overrides, e.g. train.steps=50")
    args = p.parse_args(argv)
    from mixvlp_ds.train.config import load_run_config

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.fresh and args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    run = load_run_config(args.config, args.overrides + ["tokenizer=unused"])  # sizes only
    size = run.model.image_size
    timings, t0 = {}, time.perf_counter()
    shards = write_shards(args.nih_dir, args.nih_images, args.out / "shards", size, args.synthetic_num,
                          args.seed)
    held = held_out_check(shards["nih"]["dir"], args.split)
    tokenizer = make_tokenizer(args.out / "tokenizer")
    timings["shards_s"], t1 = time.perf_counter() - t0, time.perf_counter()
    model_dir, pretrain_cmd = pretrain(args.config, args.out, shards, tokenizer, args.overrides)
    timings["pretrain_s"], t2 = time.perf_counter() - t1, time.perf_counter()
    res = evaluate(model_dir, shards["nih"]["dir"], args.split, args.out,
                   RegenOptions(num_images=args.num_images, grids=args.grids, seed=args.seed))
    timings["evaluate_s"] = time.perf_counter() - t2
    from mixvlp_ds.train.metrics import read_metrics

    metrics_file = args.out / "pretrain" / "metrics.jsonl"
    steps = read_metrics(metrics_file) if metrics_file.is_file() else {}
    last = steps[max(steps)] if steps else {}
    md = (f"Regeneration of {res['n']} held-out real NIH radiographs (split {args.split}, "
          f"{held['eval_patients']} patients, none in pre-training), {size} px, {res['variant']}\n\n"
          + reference_table(res["rows"]))
    summary = {
        "task": "nih_regen", "held_out": held, "shards": shards, "pretrain_command": pretrain_cmd,
        "model_dir": str(model_dir), "model": {k: getattr(run.model, k) for k in
                                               ("image_size", "block_size", "hidden", "layers", "heads")},
        "params": _count_params(model_dir),
        "train_steps": last.get("step"), "final_loss": last.get("loss"), "timings": timings,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads()},
        "results": {k: {kk: vv for kk, vv in r.items() if kk != "per_image"} for k, r in res["rows"].items()},
        "per_image": {"keys": res["keys"], **{k: r["per_image"] for k, r in res["rows"].items()}},
        "grids": res["grids"], "compare_grids": res["compare_grids"],
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=1))
    (args.out / "results.md").write_text(md + "\n")
    print(md)
    print(f"[nih_regen] {json.dumps(timings)}; grids: {args.out / 'grids'}; "
          f"results: {args.out / 'results.json'}")
    return summary


def _count_params(model_dir: Path) -> int:
    from mixvlp_ds.model import MixVLP

    return sum(p.numel() for p in MixVLP.from_pretrained(model_dir).parameters())


if __name__ == "__main__":
    main()
