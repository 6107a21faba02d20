"""One fine-tuned head at a time, each on a fresh copy of the encoder: a classification probe (GAP +
linear, BCE; AUC per finding) or a hash head (64-bit codes, Cauchy hashing loss; P@K). Each writes
its model directory (the encoder, the head's weights, head.json for `python -m mixvlp_ds evaluate`) and
returns its results."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixvlp_ds.apps import metrics, plots
from mixvlp_ds.apps.classification import (
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
from mixvlp_ds.apps.loop import FitOptions, fit, predict
from mixvlp_ds.apps.references import bootstrap_mean_auc
from mixvlp_ds.apps.retrieval import KS, QUERY_SIDES, evaluate_codes, random_code_baseline
from mixvlp_ds.apps.rows import Rows


@dataclass(frozen=True)
class Start:
    """Where every head of a fine-tuning run starts: the pre-trained directory, or random weights."""

    model: Any                # the run's model (finetune.build_model): its config builds the random init
    init_dir: Path | None     # the pre-trained MixVLP directory; None = from scratch

    def fresh_copy(self, seed: int):
        """A new encoder for each row: the checkpoint again, or the same random init again."""
        from mixvlp_ds.model import MixVLP

        if self.init_dir is not None:
            return MixVLP.from_pretrained(self.init_dir)
        torch.manual_seed(seed)
        return MixVLP(self.model.cfg)


def fit_options(cfg, name: str, min_batch: int = 1) -> FitOptions:
    """The FinetuneConfig's training knobs for one head."""
    return FitOptions(epochs=cfg.epochs, batch_size=max(cfg.batch_size, min_batch), lr=cfg.lr,
                      weight_decay=cfg.weight_decay, seed=cfg.seed, name=name)


HEAD_INFO = "head.json"


def write_head_info(d: Path, **info) -> None:
    """What `python -m mixvlp_ds evaluate` needs to rebuild the head: kind, side, label space, policy,
    image pooling (absent in older runs = mean)."""
    (d / HEAD_INFO).write_text(json.dumps(info, indent=2))


def make_pool(m, side: str, kind: str, level: int):
    """The image pooling of this head (None for the text side: F_txt is always averaged)."""
    return None if side == "txt" else image_pool(m, kind, level)


def fit_cls_head(cfg, start: Start, tr: Rows, ev: Rows, side: str, out: Path) -> dict:
    """Classification on `side` (img | txt): `cfg` is the FinetuneConfig (epochs, lr, pooling, ...);
    one output per finding of the rows' label space."""
    from mixvlp_ds.labels import label_names

    names = label_names(tr.space)
    m = start.fresh_copy(cfg.seed)
    pool = make_pool(m, side, cfg.pool, cfg.pool_level)
    probe = LinearProbe(feature_dim(m, side, pool), len(names), pool)
    y_tr = apply_label_policy(torch.from_numpy(tr.labels), cfg.uncertain)

    def loss(rows):
        return masked_bce(probe(pooled_features(m, tr.batch(rows), side, pool)), y_tr[rows])

    stats = fit([m, probe], loss, len(tr), fit_options(cfg, f"cls-{side}"))
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
    return {"auc": auc, "mean_auc": metrics.mean_auc(auc), "ci": list(bootstrap_mean_auc(y_ev, scores)),
            "n_train": len(tr), "n_eval": len(ev),
            "train": {k: stats[k] for k in ("steps", "seconds", "last_loss")}, "model_dir": str(d)}


def fit_hash_head(cfg, start: Start, tr: Rows, ev: Rows, query: str, out: Path) -> dict:
    """Hash retrieval for one query kind (image | text | image+text), same `cfg`."""
    side = QUERY_SIDES[query]
    m = start.fresh_copy(cfg.seed)
    pool = make_pool(m, side, cfg.pool, cfg.pool_level)
    head = HashHead(feature_dim(m, side, pool), cfg.bits, pool)
    y_tr = torch.from_numpy(binary_labels(tr.labels, cfg.uncertain))

    def loss(rows):
        h = head(pooled_features(m, tr.batch(rows), side, pool))
        return cauchy_hashing_loss(h, y_tr[rows], cfg.gamma, cfg.quant_weight)["loss"]

    stats = fit([m, head], loss, len(tr), fit_options(cfg, f"hash-{query}", min_batch=2))
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
