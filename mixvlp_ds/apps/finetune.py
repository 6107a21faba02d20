"""Fine-tuning for classification and retrieval, from a pre-training checkpoint or from scratch.

    python launchers/finetune.py --config configs/finetune_tiny.yaml task=cls init=runs/pre/model
    python launchers/finetune.py --config configs/finetune_tiny.yaml task=retrieval init=s3://bucket/run/model

`init` is a MixVLP directory (`save_pretrained`, what pre-training exports to <output_dir>/model),
local or on S3; empty = from scratch (Baseline 1, the paper's `-cls` rows) with `model_preset` +
`model_overrides`. The training rows are the P% labelled subset (`percent`, `subset_seed`: chosen by
patient with `mixvlp_ds.data.subset.in_paired_subset`, the same subset pre-training used); left
unset, both are read from the pre-trained run (`<init>/pretraining.json`: its paired P% and seed),
and a model without that file (from scratch, an older export) trains on 100% (seed 0); a log line
says which. Evaluation uses the whole `eval_split`.

cls:       for each side (img, txt) a fresh copy of the encoder + GAP + linear, BCE over the findings
           -> ROC AUC per finding + mean (Table 1 rows img_only/txt_only or img+txt/txt+img).
retrieval: for each query kind (image, text, image+text) a fresh copy + 64-bit hash layer, Cauchy
           hashing loss -> P@1/5/10/50 on the eval split (Table 3).
`pool` (opt-in, default `mean` = the paper's GAP) changes how F_img is pooled for the image heads:
`level_concat` (tokens of pyramid level `pool_level`, flattened) or `attention` (classification.py).
Writes <output_dir>/results.json, results.md, plots, and per row the fine-tuned weights.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from mixvlp_ds import stage_progress
from mixvlp_ds.apps import plots, tables
from mixvlp_ds.apps.classification import POOLS, UNCERTAIN_POLICIES, row_name
from mixvlp_ds.apps.heads import Start, fit_cls_head, fit_hash_head
from mixvlp_ds.apps.retrieval import KS, QUERY_SIDES
from mixvlp_ds.apps.rows import Rows, check_same_label_space, fetch_model_dir, labelled_samples, usable
from mixvlp_ds.config import ConfigError


@dataclass
class FinetuneConfig:
    task: Literal["cls", "retrieval"] = "cls"   # cls: probes (Table 1); retrieval: hash heads (Table 3)
    shards: str = "shards/openi-like"          # labelled shard folder (local or s3://)
    train_split: str = "train"                  # split of `shards` the heads train on
    eval_split: str = "test"                    # split of `eval_shards` (or `shards`) they are scored on
    eval_shards: str = ""                       # "" = `shards` (e.g. another institution's test set)
    label_space: str = ""                       # "" = the folder's own
    init: str = ""                              # MixVLP dir (local / s3://); "" = from scratch
    tokenizer: str = ""                         # "" = <init>/tokenizer
    model_preset: str = "tiny"                  # from scratch only: ModelConfig.preset size
    model_arch: str = "uwox"                    # from scratch only: uwox | unit | aiayn-*
    model_overrides: dict[str, Any] = field(default_factory=dict)  # from scratch only: ModelConfig fields
    percent: float | None = None                # P% of patients trained on; unset: the pre-trained run's/100
    subset_seed: int | None = None              # which P% subset; unset: the pre-trained run's/0
    sides: list[str] = field(default_factory=lambda: ["img", "txt"])                 # cls: one head per side
    queries: list[str] = field(default_factory=lambda: ["image", "text", "image+text"])  # retrieval heads
    uncertain: str = "zeros"                    # uncertain-label policy (classification.py)
    pool: str = "mean"                          # F_img pooling: mean (paper) | level_concat | attention
    pool_level: int = 1                         # level_concat: 0 finest, 1 mid, 2 coarse
    epochs: int = 10                            # passes over the training rows, per head
    batch_size: int = 16                        # rows per step (retrieval: at least 2, pairs)
    lr: float = 1e-4                            # peak AdamW learning rate (warm-up 10%, cosine decay)
    head_lr: float = 0.0                        # reserved: not read; the head trains at `lr`
    weight_decay: float = 0.01                  # AdamW's decoupled weight decay
    bits: int = 64                              # retrieval: hash code length
    gamma: float = 20.0                         # retrieval: Cauchy scale of the hashing loss (DCH)
    quant_weight: float = 0.1                   # retrieval: weight of the quantisation loss
    max_train_samples: int = 0                  # 0 = all
    max_eval_samples: int = 0                   # 0 = all
    seed: int = 0                               # seeds the random init, row order and dropout
    output_dir: str = "runs/finetune"           # results.json, results.md, plots, models/<row>/
    plots: bool = True                          # ROC curves / P@K curves as PNG

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
        if self.percent is not None and not 0 < self.percent <= 100:
            raise ConfigError(f"percent={self.percent} must lie in (0, 100]")


# ----------------------------------------------------------------------------- the labelled subset

SUBSET_DEFAULTS = {"percent": 100.0, "subset_seed": 0}   # where nothing says otherwise: every row


def pretrained_subset(init_dir: Path | None, init: str) -> tuple[dict, str, dict]:
    """What the pre-trained run says of its P% paired subset: (values found among percent /
    subset_seed, where they come from, {key: why not} for the others). `init`: the directory as the
    config names it (init_dir may be a download of it)."""
    from mixvlp_ds.model.export import read_pretraining
    from mixvlp_ds.model.mixvlp import PRETRAINING

    if init_dir is None:
        return {}, "", dict.fromkeys(SUBSET_DEFAULTS, "from scratch, no pre-trained run")
    facts = read_pretraining(init_dir)
    if facts is None:
        return {}, "", dict.fromkeys(SUBSET_DEFAULTS, f"{init} has no {PRETRAINING} (an older export?)")
    found, why = {"subset_seed": facts["subset_seed"]}, {}
    shares = set(facts["paired_percent"].values())
    if len(shares) == 1 and 0 < min(shares) <= 100:
        found["percent"] = float(min(shares))
    else:   # no paired source, several P, or P = 0: no one labelled subset to follow
        why["percent"] = f"pre-training's paired sources had P% {facts['paired_percent']}"
    return found, f"from the pre-trained run, {init.rstrip('/')}/{PRETRAINING}", why


def resolve_subset(cfg: FinetuneConfig, init_dir: Path | None) -> tuple[FinetuneConfig, dict, str]:
    """A copy of `cfg` with percent and subset_seed filled (set in the config > the pre-trained run's
    > SUBSET_DEFAULTS), where each came from, and the log line that says so."""
    unset = cfg.percent is None or cfg.subset_seed is None
    found, where, why = pretrained_subset(init_dir, cfg.init) if unset else ({}, "", {})
    values, origin = {}, {}
    for key, default in SUBSET_DEFAULTS.items():
        if getattr(cfg, key) is not None:
            values[key], origin[key] = getattr(cfg, key), "set in the config"
        elif key in found:
            values[key], origin[key] = found[key], where
        else:
            values[key], origin[key] = default, f"the default: {why[key]}"
    p, seed = values["percent"], values["subset_seed"]
    if origin["percent"] == origin["subset_seed"]:
        line = f"subset: percent={p:g} subset_seed={seed} ({origin['percent']})"
    else:
        line = f"subset: percent={p:g} ({origin['percent']}), subset_seed={seed} ({origin['subset_seed']})"
    return dataclasses.replace(cfg, **values), origin, line


# ----------------------------------------------------------------------------- the run


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


def run(cfg: FinetuneConfig) -> dict:
    from mixvlp_ds.data.reader import read_index
    from mixvlp_ds.labels import label_names

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
        cfg, subset_from, line = resolve_subset(cfg, init_dir)
        print(f"[finetune] {line}")
        train_s = labelled_samples(cfg.shards, cfg.train_split, cfg.label_space, cfg.max_train_samples,
                                   cfg.percent, cfg.subset_seed)
        eval_s = labelled_samples(cfg.eval_shards or cfg.shards, cfg.eval_split, cfg.label_space,
                                  cfg.max_eval_samples)
        mc, start = model.cfg, Start(model, init_dir)
        results: dict[str, dict] = {}
        keys = cfg.sides if cfg.task == "cls" else cfg.queries
        for key in stage_progress.over(keys):   # each head: an equal share of the stage's bar
            side = key if cfg.task == "cls" else QUERY_SIDES[key]
            tr_s, ev_s = usable(train_s, mc.fusion, side), usable(eval_s, mc.fusion, side)
            if not tr_s or not ev_s:
                print(f"[finetune] skip {key}: {len(tr_s)} train / {len(ev_s)} eval rows carry what it needs")
                continue
            tr = Rows(tr_s, tok, space, mc.max_text_len, mc.image_size)
            ev = Rows(ev_s, tok, space, mc.max_text_len, mc.image_size)
            if cfg.task == "cls":
                row = row_name(mc.fusion, key)
                results[row] = fit_cls_head(cfg, start, tr, ev, key, out)
            else:
                results[key] = fit_hash_head(cfg, start, tr, ev, key, out)
    summary = {"task": cfg.task, "init": cfg.init or "scratch", "percent": cfg.percent,
               "subset_seed": cfg.subset_seed, "subset_from": subset_from, "label_space": space,
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
