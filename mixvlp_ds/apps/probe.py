"""Linear probes of frozen features: did pre-training put the findings into F_img and F_txt?

    python -m mixvlp_ds.apps.probe --model mixup2=runs/sweep/mixup2/P5/seed0/pretrain/model \
        --model baseline2=runs/sweep/baseline2/P5/seed0/pretrain/model --random --pixels --text \
        --train-shards shards/mimic-like --eval-shards shards/openi-like \
        --fractions 5 100 --seeds 0 1 2 --out runs/probe

Fine-tuning mixes two questions: is the label signal in the features, and can a few hundred
gradient steps on P% of the labels get it out? A probe answers the first alone (the MAE paper's
linear probing): the encoder is frozen, each feature kind is computed once, and one logistic
regression per finding is fitted on the P% patient subset of the training split (the sweep's
subset, `in_paired_subset`) and scored on the evaluation split. Feature kinds per model:

    gap       global average of the F_img tokens (what the paper's classifier reads), C values
    level<l>  the F_img tokens of pyramid level l (0 = finest), flattened in patch order
    F_txt     (--text) the mean of the F_txt tokens of the report (what txt_only reads)

References that need no pre-training: `--random` (the first model's architecture with random
weights, seed 0: Baseline 1's starting point) and `--pixels` (the raw pixels of each level).
Pre-training helps where a model's row beats the random row at small P.

A finding with one class in a training subset gets a constant score (AUC 0.5 where the
evaluation split has both classes): a classifier that saw no positive has learned nothing.

`--pair-match SHARDS` also asks whether a UWOX model's pair-matching head reads the report: each
paired test image is scored with its own report and with the report of another study whose label
vector differs; the AUC of true over swapped pairs is 0.5 for a head that looks at the image alone
(e.g. one that learned which institution or subset an image comes from, a shortcut the mix-up
scenarios offer when true pairs and re-paired tuples come from different images).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import sparse
from sklearn.preprocessing import StandardScaler

from mixvlp_ds.apps import metrics
from mixvlp_ds.apps.classification import binary_labels, per_finding_logreg


def labelled_rows(uri: str, split: str, side: str = "img", label_space: str | None = None) -> dict:
    """Every labelled row of a split that carries `side` ("img" | "txt"): {"labels": (N, K) float,
    "patients": [N], "names": findings} plus "pyramid" [3 x (N, s, s) uint8] or "texts" [N]."""
    from mixvlp_ds.data.reader import iter_samples, read_index
    from mixvlp_ds.labels import label_names

    space = label_space or read_index(uri).get("label_space", "none")
    member = "pyramid" if side == "img" else "text"
    rows = [s for s in iter_samples(uri, split, label_space=space) if s[member] is not None]
    if not rows:
        raise ValueError(f"{uri}: split {split!r} has no {'images' if side == 'img' else 'reports'}")
    out = {"labels": np.stack([np.asarray(r["labels"], np.float32) for r in rows]),
           "patients": [str(r["patient_id"]) for r in rows], "names": list(label_names(space))}
    if side == "img":
        out["pyramid"] = [np.stack([r["pyramid"][lv] for r in rows]) for lv in range(len(rows[0]["pyramid"]))]
    else:
        out["texts"] = [r["text"] for r in rows]
    return out


@torch.no_grad()
def model_features(model, pyramid: list[np.ndarray], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Frozen F_img features of every image: {"gap": (N, C), "level<l>": (N, N_l * C)}."""
    model.eval()
    sizes = model.cfg.patches_per_level()
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(pyramid[0]), batch_size):
        batch = [torch.from_numpy(lv[start:start + batch_size]) for lv in pyramid]
        tokens = model.encode_image(batch).float()                        # (B, N, C)
        feats = {"gap": tokens.mean(1)}
        offsets = np.cumsum([0, *sizes])
        for lv in range(len(sizes)):
            feats[f"level{lv}"] = tokens[:, offsets[lv]:offsets[lv + 1]].flatten(1)
        for k, v in feats.items():
            chunks.setdefault(k, []).append(v.cpu().numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


@torch.no_grad()
def text_features(model, tokenizer, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean-pooled F_txt of every report (what the txt_only classifier reads): (N, C)."""
    from mixvlp_ds.data.collate import tokenize

    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        ids, att = tokenize(tokenizer, texts[start:start + batch_size], model.cfg.max_text_len, False)
        out.append(model.pooled_text(ids, att).float().cpu().numpy())
    return np.concatenate(out)


def pixel_features(pyramid: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Raw pixels of each level, flattened, in [0, 1]: {"level<l>": (N, s_l * s_l)}."""
    return {f"level{lv}": x.reshape(len(x), -1).astype(np.float32) / 255.0 for lv, x in enumerate(pyramid)}


def probe_auc(x_tr: np.ndarray, y_tr: np.ndarray, x_ev: np.ndarray, y_ev: np.ndarray,
              names: list[str], c: float = 0.01) -> dict[str, float | None]:
    """Standardise on the training rows, one L2 logistic regression per finding, AUC per finding.
    y_*: (N, K) 0/1."""
    scaler = StandardScaler(with_mean=not sparse.issparse(x_tr)).fit(x_tr)   # sparse: TF-IDF
    scores = per_finding_logreg(scaler.transform(x_tr), y_tr, scaler.transform(x_ev), C=c, max_iter=2000)
    return metrics.auc_per_finding(y_ev, scores, names)


def run_probes(rows: dict[str, tuple[np.ndarray, np.ndarray, str]], data: dict[str, tuple[dict, dict]],
               fractions: list[float], seeds: list[int], c: float = 0.01) -> dict:
    """rows: {row name: (train features, eval features, side)}; data: {side: (train rows, eval rows)}.
    Returns {row: {"P": {"mean": m, "std": s, "per_seed": [...], "n_train": [...]}}}."""
    out: dict[str, dict] = {}
    for row, (x_tr, x_ev, side) in rows.items():
        train, ev = data[side]
        out[row] = {}
        for p in fractions:
            subsets = [PatientSubset(p, seed) for seed in seeds]
            aucs = [subset_probe(x_tr, train, x_ev, ev, sub, c) for sub in subsets]
            counts = [int(sub.mask(train["patients"]).sum()) for sub in subsets]
            out[row][f"{p:g}"] = {"mean": float(np.mean(aucs)), "std": float(np.std(aucs)),
                                  "per_seed": aucs, "n_train": counts}
    return out


@dataclass(frozen=True)
class PatientSubset:
    """The P% patient subset a probe is fitted on: the sweep's (`in_paired_subset`)."""

    percent: float      # P: the share of patients kept
    seed: int = 0       # which P% subset (the sweep's subset_seed)

    def mask(self, patients: list[str]) -> np.ndarray:
        """(N,) bool: the rows whose patient is in the subset."""
        from mixvlp_ds.data.subset import in_paired_subset

        return np.array([in_paired_subset(pid, self.percent, self.seed) for pid in patients])


def subset_probe(x_tr: np.ndarray, train: dict, x_ev: np.ndarray, ev: dict, subset: PatientSubset,
                 c: float = 0.01) -> float | None:
    """Mean AUC of a probe fitted on the P% patient subset of the training rows."""
    keep = subset.mask(train["patients"])
    auc = probe_auc(x_tr[keep], binary_labels(train["labels"][keep]), x_ev, binary_labels(ev["labels"]),
                    ev["names"], c)
    return metrics.mean_auc(auc)


def probe_cell(model, tokenizer, data: dict[str, tuple[dict, dict]], subset: PatientSubset,
               image_kind: str = "level1", c: float = 0.01) -> dict[str, float | None]:
    """One sweep cell's frozen-feature probes: {"img_only": mean AUC, "txt_only": mean AUC} for the
    sides in `data` ({"img" | "txt": (train rows, eval rows)}) that the model encodes."""
    out: dict[str, float | None] = {}
    if "img" in data and model.cfg.use_image:
        tr, ev = data["img"]
        x_tr, x_ev = (model_features(model, d["pyramid"])[image_kind] for d in (tr, ev))
        out["img_only"] = subset_probe(x_tr, tr, x_ev, ev, subset, c)
    if "txt" in data and model.cfg.use_text:
        tr, ev = data["txt"]
        x_tr, x_ev = (text_features(model, tokenizer, d["texts"]) for d in (tr, ev))
        out["txt_only"] = subset_probe(x_tr, tr, x_ev, ev, subset, c)
    return out


def swap_partners(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each row, another row whose label vector differs (NaN read as 0), drawn at random; the
    next row when every row says the same. labels: (N, K) -> (N,) int."""
    y = np.nan_to_num(np.asarray(labels, np.float32))
    rng = np.random.default_rng(seed)
    out = np.empty(len(y), np.int64)
    for i in range(len(y)):
        cand = np.flatnonzero((y != y[i]).any(1))
        out[i] = rng.choice(cand) if len(cand) else (i + 1) % len(y)
    return out


@torch.no_grad()
def pair_match_auc(model, tokenizer_dir: Path, uri: str, split: str = "test", batch_size: int = 64,
                   seed: int = 0) -> dict:
    """AUC of I_pair for (image, own report) against (same image, a report with other labels)."""
    from mixvlp_ds.data.collate import tokenize
    from mixvlp_ds.data.reader import iter_samples
    from mixvlp_ds.text.tokenizer import load_tokenizer

    if getattr(model, "pair_head", None) is None:
        raise ValueError("the model has no pair-matching head (UWOX only)")
    tok = load_tokenizer(tokenizer_dir)
    rows = [s for s in iter_samples(uri, split) if s["pyramid"] is not None and s["text"]]
    if len(rows) < 2:
        raise ValueError(f"{uri}: split {split!r} has fewer than 2 paired rows")
    other = swap_partners(np.stack([np.asarray(r["labels"], np.float32) for r in rows]), seed)
    model.eval()
    scores = {"own": [], "swapped": []}
    for start in range(0, len(rows), batch_size):
        idx = np.arange(start, min(start + batch_size, len(rows)))
        pyr = [torch.from_numpy(np.stack([rows[i]["pyramid"][lv] for i in idx]))
               for lv in range(len(rows[0]["pyramid"]))]
        e_img = torch.cat(model.encode_levels(model.image_levels(pyr)), 1)
        for kind, texts in (("own", idx), ("swapped", other[idx])):
            ids, att = tokenize(tok, [rows[j]["text"] for j in texts], model.cfg.max_text_len, False)
            e_txt = model.encode_words(ids, att)
            logits = model.pair_head(e_txt, att.bool().to(e_txt.device), e_img)
            scores[kind].append(logits.float().cpu().numpy())
    own, swapped = np.concatenate(scores["own"]), np.concatenate(scores["swapped"])
    y = np.r_[np.ones(len(own)), np.zeros(len(swapped))]
    from sklearn.metrics import roc_auc_score

    return {"auc": float(roc_auc_score(y, np.r_[own, swapped])), "n": len(rows),
            "mean_logit_own": float(own.mean()), "mean_logit_swapped": float(swapped.mean())}


def table(results: dict, fractions: list[float]) -> str:
    """Markdown: one row per feature, one column per P, mean +- sd over subset seeds."""
    head = "| features | " + " | ".join(f"P{p:g}" for p in fractions) + " |"
    lines = [head, "|---|" + "---|" * len(fractions)]
    for row, cells in results.items():
        vals = [f"{c['mean']:.3f} ± {c['std']:.3f}" for c in (cells[f"{p:g}"] for p in fractions)]
        lines.append(f"| {row} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """The program: its options, then the probes of the module doc. Long on purpose: half of it is
    the argument list."""
    from mixvlp_ds.model import MixVLP
    from mixvlp_ds.text.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(prog="python -m mixvlp_ds.apps.probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                    help="a MixVLP directory (pre-training exports <output_dir>/model); repeatable")
    ap.add_argument("--random", action="store_true",
                    help="add the first model's architecture with random weights")
    ap.add_argument("--pixels", action="store_true", help="add raw pixels of each level")
    ap.add_argument("--kinds", nargs="+", default=["gap", "level1"], help="image feature kinds of each model")
    ap.add_argument("--text", action="store_true", help="also probe mean-pooled F_txt of the reports, with "
                    "a TF-IDF (1-2 grams) bag of words as the reference that needs no encoder")
    ap.add_argument("--train-shards", required=True)
    ap.add_argument("--eval-shards", required=True)
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--eval-split", default="test")
    ap.add_argument("--fractions", nargs="+", type=float, default=[5.0, 100.0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="P%% subset seeds")
    ap.add_argument("--C", type=float, default=0.01, help="inverse L2 strength of the logistic regressions")
    ap.add_argument("--pair-match", nargs="*", default=[], metavar="SHARDS",
                    help="also score each UWOX model's pair-matching head on these shards' test split")
    ap.add_argument("--out", default="runs/probe")
    args = ap.parse_args(argv)
    if not args.model and not args.pixels:
        ap.error("nothing to probe: give --model NAME=DIR and/or --pixels")

    sides = ["img", "txt"] if args.text else ["img"]
    data = {side: (labelled_rows(args.train_shards, args.train_split, side),
                   labelled_rows(args.eval_shards, args.eval_split, side)) for side in sides}
    models = []
    for spec in args.model:
        name, _, d = spec.partition("=")
        if not d:
            ap.error(f"--model {spec!r}: expected NAME=DIR")
        models.append((name, MixVLP.from_pretrained(Path(d)), Path(d) / "tokenizer"))
    if args.random and models:
        torch.manual_seed(0)
        models.append(("random init", MixVLP(models[0][1].cfg), models[0][2]))

    rows: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    pair_match: dict[str, dict] = {}
    for name, m, tok_dir in models:
        if m.cfg.use_image:
            tr, ev = data["img"]
            f_tr, f_ev = model_features(m, tr["pyramid"]), model_features(m, ev["pyramid"])
            rows.update({f"{name} {k}": (f_tr[k], f_ev[k], "img") for k in args.kinds})
        if args.text and m.cfg.use_text:
            tok = load_tokenizer(tok_dir)
            tr, ev = data["txt"]
            rows[f"{name} F_txt"] = (text_features(m, tok, tr["texts"]), text_features(m, tok, ev["texts"]),
                                     "txt")
        for uri in args.pair_match if name != "random init" and m.cfg.fusion == "uwox" else []:
            pm = pair_match_auc(m, tok_dir, uri, args.eval_split)
            pair_match.setdefault(name, {})[uri] = pm
            print(f"[probe] {name}: pair matching on {uri} ({pm['n']} images): AUC own vs swapped report "
                  f"{pm['auc']:.3f}")
    if args.text:
        from sklearn.feature_extraction.text import TfidfVectorizer

        tr, ev = data["txt"]
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1).fit(tr["texts"])
        rows["tf-idf"] = (vec.transform(tr["texts"]), vec.transform(ev["texts"]), "txt")
    if args.pixels:
        tr, ev = data["img"]
        f_tr, f_ev = pixel_features(tr["pyramid"]), pixel_features(ev["pyramid"])
        rows.update({f"pixels {k}": (f_tr[k], f_ev[k], "img") for k in ("level0", "level1")})

    results = run_probes(rows, data, args.fractions, args.seeds, args.C)
    md = table(results, args.fractions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"args": vars(args), "results": results, "pair_match": pair_match}
    (out / "probe.json").write_text(json.dumps(record, indent=2))
    (out / "probe.md").write_text(md + "\n")
    print(md)
    tr, ev = data["img"]
    print(f"[probe] {len(tr['patients'])} train / {len(ev['patients'])} eval images; wrote {out}/probe.md")
    return results


if __name__ == "__main__":
    main()
