"""Fine-tuning for classification and retrieval, from a pre-training checkpoint or from scratch.

    python launchers/finetune.py --config configs/finetune_tiny.yaml task=cls init=runs/pre/model
    python launchers/finetune.py --config configs/finetune_tiny.yaml task=retrieval init=s3://bucket/run/model

`init` is a MixVLP directory (`save_pretrained`, what pre-training exports to <output_dir>/model),
local or on S3; empty = from scratch (Baseline 1, the paper's `-cls` rows) with `model_preset` +
`model_overrides`. The training rows are the P% labelled subset (`percent`, chosen by patient with
`mixvlp_ds.data.subset.in_paired_subset`, the same subset pre-training used); evaluation uses the
whole `eval_split`.

cls:       for each side (img, txt) a fresh copy of the encoder + GAP + linear, BCE over the findings
           -> ROC AUC per finding + mean (Table 1 rows img_only/txt_only or img+txt/txt+img).
retrieval: for each query kind (image, text, image+text) a fresh copy + 64-bit hash layer, Cauchy
           hashing loss -> P@1/5/10/50 on the eval split (Table 3).
`pool` (opt-in, default `mean` = the paper's GAP) changes how F_img is pooled for the image heads:
`level_concat` (tokens of pyramid level `pool_level`, flattened) or `attention` (classification.py).
Writes <output_dir>/results.json, results.md, plots, and per row the fine-tuned weights.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from mixvlp_ds.apps import metrics, plots, tables
from mixvlp_ds.apps.classification import (
    POOLS,
    UNCERTAIN_POLICIES,
    LinearProbe,
    apply_label_policy,
    binary_labels,
    feature_dim,
    image_pool,
    masked_bce,
    pooled_features,
    row_name,
)
from mixvlp_ds.apps.hashing import HashHead, cauchy_hashing_loss
from mixvlp_ds.apps.loop import fit, predict
from mixvlp_ds.apps.retrieval import KS, QUERY_SIDES, evaluate_codes, random_code_baseline
from mixvlp_ds.config import ConfigError


@dataclass
class FinetuneConfig:
    task: Literal["cls", "retrieval"] = "cls"
    shards: str = "shards/openi-like"          # labelled shard folder (local or s3://)
    train_split: str = "train"
    eval_split: str = "test"
    eval_shards: str = ""                       # "" = `shards` (e.g. another institution's test set)
    label_space: str = ""                       # "" = the folder's own
    init: str = ""                              # MixVLP dir (local / s3://); "" = from scratch
    tokenizer: str = ""                         # "" = <init>/tokenizer
    model_preset: str = "tiny"                  # from scratch only
    model_arch: str = "uwox"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    percent: float = 100.0                      # labelled fraction P, by patient
    subset_seed: int = 0
    sides: list[str] = field(default_factory=lambda: ["img", "txt"])                 # cls
    queries: list[str] = field(default_factory=lambda: ["image", "text", "image+text"])  # retrieval
    uncertain: str = "zeros"                    # uncertain-label policy (classification.py)
    pool: str = "mean"                          # F_img pooling: mean (paper) | level_concat | attention
    pool_level: int = 1                         # level_concat: 0 finest, 1 mid, 2 coarse
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    head_lr: float = 0.0                        # 0 = lr
    weight_decay: float = 0.01
    bits: int = 64
    gamma: float = 20.0
    quant_weight: float = 0.1
    max_train_samples: int = 0                  # 0 = all
    max_eval_samples: int = 0
    seed: int = 0
    output_dir: str = "runs/finetune"
    plots: bool = True

    def validate(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ConfigError(f"uncertain={self.uncertain!r} is not one of {UNCERTAIN_POLICIES}")
        bad = [s for s in self.sides if s not in ("img", "txt")]
        if bad:
            raise ConfigError(f"sides {bad}: each side is 'img' or 'txt'")
        bad = [q for q in self.queries if q not in QUERY_SIDES]
        if bad:
            raise ConfigError(f"queries {bad}: each is one of {list(QUERY_SIDES)}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool={self.pool!r} is not one of {POOLS}")
        if not 0 < self.percent <= 100:
            raise ConfigError(f"percent={self.percent} must lie in (0, 100]")


# ----------------------------------------------------------------------------- inputs


def fetch_model_dir(uri: str, cache: Path) -> Path:
    """A local MixVLP directory for `uri` (downloads every object under an s3:// prefix)."""
    from mixvlp_ds.storage import is_s3, parse_s3_uri, s3_client

    if not is_s3(uri):
        p = Path(uri)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} is not a MixVLP directory (no config.json); pre-training "
                                    "exports one to <output_dir>/model")
        return p
    u = parse_s3_uri(uri)
    s3 = s3_client()
    prefix = u.key().rstrip("/") + "/"
    dest = cache / u.bucket / prefix.strip("/")
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(u.bucket, obj["Key"], str(target))
            n += 1
    if not (dest / "config.json").is_file():
        raise FileNotFoundError(f"{uri}: no config.json among {n} objects (not a MixVLP directory)")
    return dest


def load_split_samples(cfg: FinetuneConfig, split: str, train: bool) -> list[dict]:
    """Decoded labelled samples of one split; training rows restricted to the P% patient subset."""
    from mixvlp_ds.data.reader import iter_samples
    from mixvlp_ds.data.subset import in_paired_subset

    out = []
    limit = cfg.max_train_samples if train else cfg.max_eval_samples
    uri = cfg.shards if train or not cfg.eval_shards else cfg.eval_shards
    for s in iter_samples(uri, split, label_space=cfg.label_space or None):
        if train and not in_paired_subset(s["patient_id"], cfg.percent, cfg.subset_seed):
            continue
        out.append(s)
        if limit and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{uri}: split {split!r} has no samples"
                         + (f" in the {cfg.percent}% subset" if train else ""))
    return out


def usable(samples: list[dict], fusion: str, side: str) -> list[dict]:
    """Rows that carry what this side needs: UNIT needs both; UWOX img needs the image, txt the text."""
    need_img = side in ("img", "both") or fusion == "unit"
    need_txt = side in ("txt", "both") or fusion == "unit"
    return [s for s in samples if (s["pyramid"] is not None or not need_img)
            and (s["text"] is not None or not need_txt)]


class Rows:
    """Samples held in memory, collated on demand by row index."""

    def __init__(self, samples: list[dict], tokenizer, label_space: str, max_text_len: int, image_size: int):
        from mixvlp_ds.data.collate import collate

        self.samples, self.tok, self.space = samples, tokenizer, label_space
        self.collate, self.max_len, self.image_size = collate, max_text_len, image_size
        self.labels = np.stack([np.asarray(s["labels"], np.float32) for s in samples])

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, rows) -> dict:
        return self.collate([self.samples[i] for i in rows], self.tok, mask_text=False,
                            label_space=self.space, image_size=self.image_size,
                            max_text_len=self.max_len, pad_to_max=False)


def build_model(cfg: FinetuneConfig, cache: Path):
    """(model, tokenizer, init dir or None)."""
    from mixvlp_ds.model import MixVLP, ModelConfig
    from mixvlp_ds.text.tokenizer import load_tokenizer

    if cfg.init:
        d = fetch_model_dir(cfg.init, cache)
        tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else d / "tokenizer"
        return MixVLP.from_pretrained(d), load_tokenizer(tok_dir), d
    if not cfg.tokenizer:
        raise ConfigError("from scratch (init='') needs tokenizer=<dir> (e.g. the pre-training run's)")
    tok = load_tokenizer(cfg.tokenizer)
    mcfg = ModelConfig.preset(cfg.model_preset, arch=cfg.model_arch,
                              **{"vocab_size": len(tok), **cfg.model_overrides})
    torch.manual_seed(cfg.seed)
    return MixVLP(mcfg), tok, None


def fresh_copy(model, init_dir: Path | None, seed: int):
    """A new encoder for each row: the checkpoint again, or the same random init again."""
    from mixvlp_ds.model import MixVLP

    if init_dir is not None:
        return MixVLP.from_pretrained(init_dir)
    torch.manual_seed(seed)
    return MixVLP(model.cfg)


# ----------------------------------------------------------------------------- tasks

HEAD_INFO = "head.json"


def write_head_info(d: Path, **info) -> None:
    """What `python -m mixvlp_ds.evaluate` needs to rebuild the head: kind, side, label space, policy,
    image pooling (absent in older runs = mean)."""
    (d / HEAD_INFO).write_text(json.dumps(info, indent=2))


def make_pool(m, side: str, kind: str, level: int):
    """The image pooling of this head (None for the text side: F_txt is always averaged)."""
    return None if side == "txt" else image_pool(m, kind, level)


def _train_eval_side(cfg, model, init_dir, tr: Rows, ev: Rows, side: str, names, out: Path) -> dict:
    m = fresh_copy(model, init_dir, cfg.seed)
    pool = make_pool(m, side, cfg.pool, cfg.pool_level)
    probe = LinearProbe(feature_dim(m, side, pool), len(names), pool)
    y_tr = apply_label_policy(torch.from_numpy(tr.labels), cfg.uncertain)

    def loss(rows):
        return masked_bce(probe(pooled_features(m, tr.batch(rows), side, pool)), y_tr[rows])

    stats = fit([m, probe], loss, len(tr), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                weight_decay=cfg.weight_decay, seed=cfg.seed, name=f"cls-{side}")
    scores = predict(lambda rows: probe(pooled_features(m, ev.batch(rows), side, pool)), len(ev),
                     cfg.batch_size)
    y_ev = apply_label_policy(ev.labels, cfg.uncertain)
    auc = metrics.auc_per_finding(y_ev, scores, names)
    row = row_name(m.cfg.fusion, side)
    d = out / "models" / row.replace("+", "_")
    m.save_pretrained(d, tr.tok)
    torch.save(probe.state_dict(), d / "probe.pt")
    write_head_info(d, kind="cls", side=side, row=row, label_space=tr.space, uncertain=cfg.uncertain,
                    pool=pool.kind if pool else "mean", pool_level=cfg.pool_level)
    np.savez(d / "eval_scores.npz", scores=scores, labels=y_ev)
    if cfg.plots:
        plots.roc_curves(y_ev, scores, names, out / f"roc_{row.replace('+', '_')}.png", title=f"ROC, {row}")
    return {"auc": auc, "mean_auc": metrics.mean_auc(auc), "n_train": len(tr), "n_eval": len(ev),
            "train": {k: stats[k] for k in ("steps", "seconds", "last_loss")}, "model_dir": str(d)}


def _train_eval_query(cfg, model, init_dir, tr: Rows, ev: Rows, query: str, out: Path) -> dict:
    side = QUERY_SIDES[query]
    m = fresh_copy(model, init_dir, cfg.seed)
    pool = make_pool(m, side, cfg.pool, cfg.pool_level)
    head = HashHead(feature_dim(m, side, pool), cfg.bits, pool)
    y_tr = torch.from_numpy(binary_labels(tr.labels, cfg.uncertain))

    def loss(rows):
        h = head(pooled_features(m, tr.batch(rows), side, pool))
        return cauchy_hashing_loss(h, y_tr[rows], cfg.gamma, cfg.quant_weight)["loss"]

    stats = fit([m, head], loss, len(tr), epochs=cfg.epochs, batch_size=max(cfg.batch_size, 2), lr=cfg.lr,
                weight_decay=cfg.weight_decay, seed=cfg.seed, name=f"hash-{query}")
    codes = predict(lambda rows: head(pooled_features(m, ev.batch(rows), side, pool)), len(ev),
                    cfg.batch_size)
    y_ev = binary_labels(ev.labels, cfg.uncertain)
    d = out / "models" / query.replace("+", "_")
    m.save_pretrained(d, tr.tok)
    torch.save(head.state_dict(), d / "hash_head.pt")
    write_head_info(d, kind="retrieval", side=side, query=query, label_space=tr.space,
                    uncertain=cfg.uncertain, bits=cfg.bits, pool=pool.kind if pool else "mean",
                    pool_level=cfg.pool_level)
    np.savez(d / "eval_codes.npz", codes=codes, labels=y_ev)
    res = evaluate_codes(codes, y_ev, KS)
    res.update(n_train=len(tr), train={k: stats[k] for k in ("steps", "seconds", "last_loss")},
               model_dir=str(d), random_codes=random_code_baseline(y_ev, cfg.bits, cfg.seed)["p_at_k"])
    return res


def check_same_label_space(space: str, shards: str, what: str) -> None:
    """A head trained in one label space scored on shards labelled in another is an error (the
    findings would be matched by name and the rest silently count as unlabelled)."""
    from mixvlp_ds.data.reader import read_index

    theirs = read_index(shards).get("label_space", "none")
    if theirs != space:
        raise ConfigError(f"{what} uses label space {space!r}, but the evaluation shards {shards} are "
                          f"labelled in {theirs!r}: fine-tune and evaluate in one label space")


def run(cfg: FinetuneConfig) -> dict:
    from mixvlp_ds.data.reader import read_index
    from mixvlp_ds.shard.format import label_names

    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    space = cfg.label_space or read_index(cfg.shards).get("label_space", "none")
    if cfg.eval_shards:
        check_same_label_space(space, cfg.eval_shards, f"fine-tuning on {cfg.shards}")
    names = label_names(space)
    if not names:
        raise ValueError(f"{cfg.shards}: label space {space!r} has no findings to fine-tune on")
    with tempfile.TemporaryDirectory(prefix="mixvlp-init-") as cache:
        model, tok, init_dir = build_model(cfg, Path(cache))
        train_s = load_split_samples(cfg, cfg.train_split, True)
        eval_s = load_split_samples(cfg, cfg.eval_split, False)
        mc = model.cfg
        results: dict[str, dict] = {}
        keys = cfg.sides if cfg.task == "cls" else cfg.queries
        for key in keys:
            side = key if cfg.task == "cls" else QUERY_SIDES[key]
            tr_s, ev_s = usable(train_s, mc.fusion, side), usable(eval_s, mc.fusion, side)
            if not tr_s or not ev_s:
                print(f"[finetune] skip {key}: {len(tr_s)} train / {len(ev_s)} eval rows carry what it needs")
                continue
            tr = Rows(tr_s, tok, space, mc.max_text_len, mc.image_size)
            ev = Rows(ev_s, tok, space, mc.max_text_len, mc.image_size)
            if cfg.task == "cls":
                row = row_name(mc.fusion, key)
                results[row] = _train_eval_side(cfg, model, init_dir, tr, ev, key, names, out)
            else:
                results[key] = _train_eval_query(cfg, model, init_dir, tr, ev, key, out)
    summary = {"task": cfg.task, "init": cfg.init or "scratch", "percent": cfg.percent, "label_space": space,
               "findings": list(names), "uncertain": cfg.uncertain, "results": results,
               "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}}
    if cfg.task == "cls":
        md = tables.table1(results, names)
    else:
        md = tables.table3(results, KS)
        if cfg.plots and results:
            plots.p_at_k_curves(results, out / "p_at_k.png")
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "results.md").write_text(md + "\n")
    print(md)
    print(f"[finetune] results: {out / 'results.json'}")
    return summary


def main(argv: list[str] | None = None) -> dict | None:
    import argparse
    import os

    from mixvlp_ds.config import load_config

    p = argparse.ArgumentParser(prog="launchers/finetune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="finetune config YAML (configs/finetune_*.yaml)")
    p.add_argument("--task", choices=["cls", "retrieval"], default=None)
    p.add_argument("--init", default=None, help="pre-trained MixVLP dir (local or s3://); '' = scratch")
    p.add_argument("--deepspeed_config", "--deepspeed-config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. percent=10 epochs=5")
    args = p.parse_args(argv)
    if int(os.environ.get("RANK", "0")) != 0:   # launched by deepspeed/torchrun: one worker is enough
        print(f"[finetune] rank {os.environ['RANK']}: nothing to do (rank 0 fine-tunes)", file=sys.stderr)
        return None
    overrides = list(args.overrides)
    if args.task:
        overrides.append(f"task={args.task}")
    cfg = load_config(FinetuneConfig, args.config, overrides)
    if args.init is not None:   # set directly: "--init ''" (from scratch) would read as YAML null
        cfg.init = args.init
    return run(cfg)
