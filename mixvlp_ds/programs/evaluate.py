"""Evaluation alone: classification, retrieval or regeneration on one split of a shard folder.

    python -m mixvlp_ds evaluate --task cls --model runs/ft/models/img_only --shards shards/openi-like
    python -m mixvlp_ds evaluate --task retrieval --model runs/ft/models/text --shards shards/openi-like
    python -m mixvlp_ds evaluate --task regen --checkpoint runs/pre_b8/model runs/pre_b16/model \\
        --shards shards/nih --split test --num-images 64 --grids 8 --out runs/regen
    python -m mixvlp_ds evaluate --task zeroshot --model runs/pre/model --shards shards/openi-like \\
        [--prompts my_prompts.yaml] [--random-init]
    python -m mixvlp_ds evaluate --task report_retrieval --model runs/pre/model --shards shards/openi-like

cls / retrieval take a fine-tuned directory written by launchers/finetune.py (MixVLP weights +
probe.pt or hash_head.pt + head.json). regen takes one or more pre-trained MixVLP directories
(one Table 4(b) row each). zeroshot / report_retrieval take one or more pre-trained UWOX directories
and score them through their pair-matching head with no labels (apps/zeroshot.py); --random-init adds
the first model's architecture with random weights through the same code. Each writes results.json
and results.md under --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mixvlp_ds.apps import metrics, plots, tables
from mixvlp_ds.apps.classification import (
    LinearProbe,
    apply_label_policy,
    binary_labels,
    feature_dim,
    pooled_features,
)
from mixvlp_ds.apps.hashing import HashHead
from mixvlp_ds.apps.heads import HEAD_INFO, make_pool
from mixvlp_ds.apps.loop import predict
from mixvlp_ds.apps.regeneration import RegenOptions, eval_regen
from mixvlp_ds.apps.retrieval import KS, evaluate_codes, random_code_baseline
from mixvlp_ds.apps.rows import Rows, check_same_label_space, fetch_model_dir, labelled_samples, usable


def _load(model_dir: Path):
    from mixvlp_ds.model import MixVLP
    from mixvlp_ds.text.tokenizer import load_tokenizer

    info_path = model_dir / HEAD_INFO
    if not info_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no {HEAD_INFO}; pass a models/<row> directory of a "
                                "fine-tune run")
    return MixVLP.from_pretrained(model_dir).eval(), load_tokenizer(model_dir / "tokenizer"), \
        json.loads(info_path.read_text())


def _load_with_rows(model_dir: Path, shards: str, split: str, max_samples: int):
    """The fine-tuned model, its head info, its pooling and the evaluation rows of `split`."""
    model, tok, info = _load(model_dir)
    check_same_label_space(info["label_space"], shards, f"the head in {model_dir}")
    pool = make_pool(model, info["side"], info.get("pool", "mean"), info.get("pool_level", 1))
    samples = labelled_samples(shards, split, info["label_space"], max_samples)
    ev = Rows(usable(samples, model.cfg.fusion, info["side"]), tok, info["label_space"],
              model.cfg.max_text_len, model.cfg.image_size)
    return model, info, pool, ev


def _head_outputs(head: torch.nn.Module, weights: Path, model, info: dict, pool, ev: Rows,
                  batch_size: int):
    """Load the head's weights, then run model + head over every evaluation row."""
    head.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    head.eval()
    side = info["side"]
    return predict(lambda rows: head(pooled_features(model, ev.batch(rows), side, pool)), len(ev), batch_size)


def eval_cls(model_dir: Path, shards: str, split: str, batch_size: int = 32, max_samples: int = 0) -> dict:
    from mixvlp_ds.labels import label_names

    model, info, pool, ev = _load_with_rows(model_dir, shards, split, max_samples)
    names = label_names(info["label_space"])
    probe = LinearProbe(feature_dim(model, info["side"], pool), len(names), pool)
    scores = _head_outputs(probe, model_dir / "probe.pt", model, info, pool, ev, batch_size)
    y = apply_label_policy(ev.labels, info["uncertain"])
    auc = metrics.auc_per_finding(y, scores, names)
    from mixvlp_ds.apps.references import bootstrap_mean_auc

    return {"row": info["row"], "auc": auc, "mean_auc": metrics.mean_auc(auc), "n": len(ev),
            "ci": list(bootstrap_mean_auc(y, scores)),
            "names": list(names), "scores": scores, "labels": y}


def eval_retrieval(model_dir: Path, shards: str, split: str, batch_size: int = 32,
                   max_samples: int = 0) -> dict:
    model, info, pool, ev = _load_with_rows(model_dir, shards, split, max_samples)
    head = HashHead(feature_dim(model, info["side"], pool), info["bits"], pool)
    codes = _head_outputs(head, model_dir / "hash_head.pt", model, info, pool, ev, batch_size)
    y = binary_labels(ev.labels, info["uncertain"])
    res = evaluate_codes(codes, y, KS)
    res["query"] = info["query"]
    res["random_codes"] = random_code_baseline(y, info["bits"], 0)["p_at_k"]
    return res


def pair_models(model_dirs: list[str], random_init: bool, cache: Path) -> list[tuple[str, object, object]]:
    """(name, model, tokenizer) for each pre-trained directory, and the random-weight reference."""
    from mixvlp_ds.model import MixVLP
    from mixvlp_ds.text.tokenizer import load_tokenizer

    out = []
    for m in model_dirs:
        d = fetch_model_dir(m, cache)
        out.append((m, MixVLP.from_pretrained(d).eval(), load_tokenizer(d / "tokenizer")))
    if random_init and out:
        torch.manual_seed(0)
        out.append(("random init", MixVLP(out[0][1].cfg).eval(), out[0][2]))
    return out


def eval_pair_task(task: str, models: list[tuple[str, object, object]], shards: str, split: str, out: Path,
                   prompts: str | None = None, batch_size: int = 64) -> tuple[dict, str]:
    """Zero-shot classification or image <-> report retrieval of each model: (results, markdown)."""
    from mixvlp_ds.apps import zeroshot as zs

    rows = zs.load_rows(shards, split, need_text=task == "report_retrieval")
    results = {}
    for name, model, tok in models:
        if task == "zeroshot":
            r = zs.zeroshot(model, tok, rows, zs.load_prompts(rows["label_space"], prompts), batch_size)
            tag = "".join(c if c.isalnum() else "_" for c in name)
            plots.roc_curves(r.pop("labels"), r.pop("scores"), r["names"], out / f"roc_zeroshot_{tag}.png",
                             title=f"zero-shot ROC, {name}")
        else:
            r = zs.report_retrieval(model, tok, rows, batch_size=batch_size)
        results[name] = r
    md = zs.zeroshot_table(results) if task == "zeroshot" else zs.retrieval_table(results)
    return results, md


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True,
                   choices=["cls", "retrieval", "regen", "zeroshot", "report_retrieval"])
    p.add_argument("--model", nargs="*", default=[], help="fine-tuned models/<row> dir(s) (cls, retrieval); "
                   "pre-trained UWOX dir(s) (zeroshot, report_retrieval)")
    p.add_argument("--prompts", default=None, help="zeroshot: a YAML file of positive/negative sentences "
                   "per finding (default: the shipped file of the shards' label space)")
    p.add_argument("--random-init", action="store_true", help="zeroshot / report_retrieval: add the "
                   "first model's architecture with random weights (the reference)")
    p.add_argument("--checkpoint", nargs="*", default=[], help="pre-trained MixVLP dir(s) (regen)")
    p.add_argument("--shards", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--grids", type=int, default=8)
    p.add_argument("--max-samples", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.task == "regen":
        if not args.checkpoint:
            p.error("--task regen needs --checkpoint DIR [DIR ...]")
        from mixvlp_ds.apps.regeneration import reference_table

        rows = {}
        for c in args.checkpoint:
            r = eval_regen(c, args.shards, args.split, out,
                           RegenOptions(args.num_images, args.grids, min(args.batch_size, 16)))
            r.pop("images")
            rows[r["variant"]] = r
        md = tables.table4b(rows) + "".join(f"\n\n{name} beside the references (same images, same masks)\n\n"
                                            + reference_table(r["rows"]) for name, r in rows.items())
        brief = {k: {kk: vv for kk, vv in v.items() if kk not in ("per_image", "rows")}
                 | {"references": {ref: {m: row[m] for m in ("mse", "psnr", "ssim", "model_better_share")}
                                   for ref, row in v["rows"].items()}}
                 for k, v in rows.items()}
        per_image = {k: v["per_image"] for k, v in rows.items()}
        summary = {"task": "regen", "results": brief, "per_image": per_image}
    elif args.task in ("zeroshot", "report_retrieval"):
        if not args.model:
            p.error(f"--task {args.task} needs --model DIR [DIR ...] (pre-trained UWOX directories)")
        import tempfile

        with tempfile.TemporaryDirectory() as cache:
            models = pair_models(args.model, args.random_init, Path(cache))
            rows, md = eval_pair_task(args.task, models, args.shards, args.split, out, args.prompts,
                                      args.batch_size)
        summary = {"task": args.task, "split": args.split, "shards": args.shards, "results": rows}
    else:
        if not args.model:
            p.error(f"--task {args.task} needs --model DIR [DIR ...]")
        rows = {}
        for m in args.model:
            if args.task == "cls":
                r = eval_cls(Path(m), args.shards, args.split, args.batch_size, args.max_samples)
                plots.roc_curves(r.pop("labels"), r.pop("scores"), r["names"],
                                 out / f"roc_{r['row'].replace('+', '_')}.png", title=f"ROC, {r['row']}")
                rows[r["row"]] = r
            else:
                r = eval_retrieval(Path(m), args.shards, args.split, args.batch_size, args.max_samples)
                rows[r["query"]] = r
        if args.task == "cls":
            md = tables.table1(rows, next(iter(rows.values()))["names"])
        else:
            md = tables.table3(rows, KS)
            plots.p_at_k_curves(rows, out / "p_at_k.png")
        summary = {"task": args.task, "split": args.split, "shards": args.shards, "results": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "results.md").write_text(md + "\n")
    print(md)
    print(f"[evaluate] results: {out / 'results.json'}")
    return summary


if __name__ == "__main__":
    from mixvlp_ds.status import run

    sys.exit(run(main))
