"""The real-data text benchmark: OpenI reports, 14 ChestX-ray14 findings, NegBio's gold labels.

    python -m mixvlp_ds.apps.openi_text --out runs/openi_text

Data (read in place from --openi-dir, e.g. data/real/openi_iu): indiana_reports.csv (FINDINGS + IMPRESSION of
3,851 reports), openi_gld_std14.csv (gold 0/1 labels), openi-testset.txt (771 test ids; the other
3,080 gold reports are the training set). Hernia has no positive anywhere in the gold file, and
the test set has a single Fibrosis positive: Hernia's AUC is n/a, Fibrosis's is a coin of one.

In ONE run, on the same split, it reports:
1. TF-IDF (word 1-2 grams) + one logistic regression per finding (scikit-learn): test AUC;
   and text-query retrieval: the same Cauchy hashing head trained on the TF-IDF vectors.
2. The project's encoder (MixVLP, UWOX, small): a WordPiece tokenizer trained on the training
   reports, MLM pre-training on the training reports, then (a) GAP + linear fine-tuning with BCE
   -> `txt_only` AUC per finding, and (b) DCH hash fine-tuning -> text-query P@1/5/10/50.
3. A diagnostic: a logistic regression on the FROZEN pooled F_txt of the pre-trained encoder
   (how much the MLM features alone carry).
4. The no-pre-training references (the paper's `-cls` rows): the same encoder with the same random
   weights it had before MLM, fine-tuned the same way, and frozen + logistic regression. Pre-training
   helps on real reports where (2) beats (4).
It prints a Markdown table and writes results.json (+ the tokenizer and encoder checkpoint).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixvlp_ds.apps import metrics
from mixvlp_ds.apps.classification import LinearProbe, masked_bce, per_finding_logreg
from mixvlp_ds.apps.hashing import HashHead, cauchy_hashing_loss
from mixvlp_ds.apps.loop import FitOptions, fit, predict
from mixvlp_ds.apps.retrieval import KS
from mixvlp_ds.labels import CXR14
from mixvlp_ds.shard.sources.openi import read_openi_gold, read_openi_reports


@dataclass
class Options:
    """The benchmark's command-line options (--vocab-size, --mlm-epochs, ...), one per field."""

    vocab_size: int = 3000         # WordPiece vocabulary trained on the training reports
    hidden: int = 128              # encoder width C
    layers: int = 2                # transformer blocks
    heads: int = 4                 # attention heads per block
    intermediate: int = 256        # MLP width of each block
    max_len: int = 128             # report tokens kept (longer reports are truncated)
    mlm_epochs: int = 10           # MLM pre-training passes over the training reports
    mlm_lr: float = 1e-3           # MLM peak learning rate (AdamW)
    cls_epochs: int = 10           # classification fine-tuning passes, per repeat
    cls_repeats: int = 3           # fine-tunings per encoder (seeds seed..seed+2): their spread is
                                   # the noise a single fine-tuning's AUC carries
    cls_lr: float = 3e-4           # classification fine-tuning peak learning rate
    hash_epochs: int = 6           # hash fine-tuning passes
    hash_lr: float = 3e-4          # hash fine-tuning peak learning rate
    batch_size: int = 32           # reports per step (hashing: at least 64, for enough pairs)
    gamma: float = 20.0            # Cauchy scale of the hashing loss (DCH)
    bits: int = 64                 # hash code length
    seed: int = 0                  # seeds the tokenizer/encoder init, row orders, SVD and the regressions
    time_budget_s: float = 0.0     # > 0: wall seconds for the encoder part, training stops early
                                   # beyond it (0 = off: fixed epochs, reproducible on any machine)


def load_split(openi_dir: str | Path):
    """(train_ids, test_ids, texts {id: str}, labels {id: (14,) float}) on the NegBio split."""
    openi_dir = Path(openi_dir)
    texts, gold = read_openi_reports(openi_dir), read_openi_gold(openi_dir)
    test = set((openi_dir / "openi-testset.txt").read_text().split())
    ids = sorted(set(gold) & set(texts), key=lambda s: int(s[3:]))
    missing = test - set(ids)
    if missing:
        raise ValueError(f"{openi_dir}/openi-testset.txt: {len(missing)} ids without report/gold, "
                         f"e.g. {sorted(missing)[:3]}")
    labels = {i: np.array([gold[i][n] for n in CXR14], np.float32) for i in ids}
    return [i for i in ids if i not in test], [i for i in ids if i in test], texts, labels


# ----------------------------------------------------------------------------- retrieval helper


def hash_fit(opts: Options, **changes) -> FitOptions:
    """The hash heads' training: Options' epochs, lr and seed, at least 64 rows a batch (pairs), with
    `changes` (name, epochs, lr, max_seconds, lengths, log) on top."""
    return FitOptions(**{"epochs": opts.hash_epochs, "batch_size": max(opts.batch_size, 64),
                         "lr": opts.hash_lr, "seed": opts.seed, "name": "hash", **changes})


def train_hash_head(features_fn, in_dim: int, labels: np.ndarray, opts: Options, fit_opts: FitOptions,
                    extra_modules=()):
    """DCH on features_fn(rows) -> (B, C), trained with `fit_opts` (hash_fit); returns (head, fit stats)."""
    head = HashHead(in_dim, opts.bits)
    y = torch.from_numpy(labels)

    def loss(rows):
        return cauchy_hashing_loss(head(features_fn(rows)), y[rows], gamma=opts.gamma)["loss"]

    stats = fit([head, *extra_modules], loss, len(labels), fit_opts)
    return head, stats


# ----------------------------------------------------------------------------- TF-IDF baseline


def tfidf_classify(train_texts, y_train, test_texts, seed: int = 0):
    """TF-IDF (word 1-2 grams, min_df 2, sublinear tf) + one balanced logistic regression per
    finding. Returns (test scores (N_test, K), fitted vectorizer, train matrix, test matrix)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=20000)
    x_train, x_test = vec.fit_transform(train_texts), vec.transform(test_texts)
    scores = per_finding_logreg(x_train, y_train, x_test, C=10.0, max_iter=2000, class_weight="balanced",
                                solver="liblinear", random_state=seed)
    return scores, vec, x_train, x_test


def tfidf_baseline(train_texts, y_train, test_texts, y_test, opts: Options) -> dict:
    t0 = time.time()
    scores, _, x_train, x_test = tfidf_classify(train_texts, y_train, test_texts, opts.seed)
    auc = metrics.auc_per_finding(y_test, scores, CXR14)
    cls_s = time.time() - t0
    # Retrieval: the same 64-bit Cauchy hashing head, on a 256-d LSA projection of the TF-IDF
    # vectors (20k dense columns would cost minutes of CPU for no gain in a linear layer).
    from sklearn.decomposition import TruncatedSVD
    svd = TruncatedSVD(256, random_state=opts.seed).fit(x_train)
    xt = torch.from_numpy(svd.transform(x_train).astype(np.float32))
    xe = torch.from_numpy(svd.transform(x_test).astype(np.float32))
    torch.manual_seed(opts.seed)
    head, _ = train_hash_head(lambda rows: xt[rows], xt.shape[1], y_train, opts,
                              hash_fit(opts, name="tfidf-hash", epochs=30, lr=1e-3, log=False))
    with torch.no_grad():
        codes = head(xe).numpy()
    p_at_k = metrics.precision_at_k(codes, y_test, KS)
    return {"auc": auc, "mean_auc": metrics.mean_auc(auc), "p_at_k": p_at_k,
            "features": x_train.shape[1], "seconds": time.time() - t0, "cls_seconds": cls_s}


# ----------------------------------------------------------------------------- the project's encoder


def _trim(ids: torch.Tensor, att: torch.Tensor):
    """Drop the all-padding tail columns of a batch (CPU time is spent per token)."""
    n = int(att.sum(1).max())
    return ids[:, :n], att[:, :n]


class EncoderBench:
    """The project's text encoder on the OpenI reports, beside its no-pre-training references, in the
    order the figures depend on (each step draws from torch's global RNG after the previous one):
    MLM pre-training -> frozen features + LR (pre-trained, then random init) -> fine-tuning from the
    pre-trained encoder, then from the random init (cls_repeats each) -> hash fine-tuning."""

    def __init__(self, train_texts, y_train, test_texts, y_test, opts: Options, out_dir: Path):
        from mixvlp_ds.model import MixVLP, ModelConfig
        from mixvlp_ds.text.tokenizer import train_tokenizer

        self.t_start, self.opts, self.out_dir = time.time(), opts, out_dir
        self.train_texts, self.y_train, self.y_test = train_texts, y_train, y_test
        self.n_test = len(test_texts)
        torch.manual_seed(opts.seed)
        self.tok = train_tokenizer(train_texts, out_dir / "tokenizer", vocab_size=opts.vocab_size)
        self.ids = {"train": self._encode(train_texts), "test": self._encode(test_texts)}
        self.lengths = self.ids["train"][1].sum(1).numpy()
        self.cfg = ModelConfig.preset("tiny", arch="uwox", vocab_size=len(self.tok), hidden=opts.hidden,
                                      layers=opts.layers, heads=opts.heads, intermediate=opts.intermediate,
                                      max_text_len=opts.max_len, dropout=0.1, attention_dropout=0.1)
        self.model = MixVLP(self.cfg)
        self.init_state = copy.deepcopy(self.model.state_dict())
        self.pre_dir = out_dir / "pretrained"

    def _encode(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tok(list(texts), max_length=self.opts.max_len, truncation=True, padding="max_length",
                       return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def seconds_left(self) -> float | None:
        o = self.opts
        return max(60.0, o.time_budget_s - (time.time() - self.t_start)) if o.time_budget_s else None

    def pretrain_mlm(self) -> dict:
        """MLM on the training reports (L_txt only: text-only rows), batches made by the data
        pipeline's collate with words masked as in pre-training and no pyramid."""
        from mixvlp_ds.data.collate import BatchSpec, collate

        o = self.opts
        spec = BatchSpec(label_space="none", image_size=None, max_text_len=self.cfg.max_text_len,
                         pad_to_max=False, text_mask_ratio=self.cfg.text_mask_ratio)
        rows = [{"text": t, "labels": (), "key": "", "institution": "openi", "patient_id": ""}
                for t in self.train_texts]
        gen = torch.Generator().manual_seed(o.seed)

        def loss(batch_rows):
            return self.model(collate([rows[i] for i in batch_rows], self.tok, spec, gen))["L_txt"]

        stats = fit([self.model], loss, len(rows),
                    FitOptions(epochs=o.mlm_epochs, batch_size=o.batch_size, lr=o.mlm_lr, seed=o.seed,
                               max_seconds=o.time_budget_s * 0.45 or None, lengths=self.lengths, name="mlm"))
        self.model.save_pretrained(self.pre_dir, self.tok)
        return stats

    def pooled(self, m, split: str):
        """rows -> the pooled F_txt (B, C) of `m` for those rows of `split`."""
        ids_all, att_all = self.ids[split]

        def features(rows):
            return m.pooled_text(*_trim(ids_all[rows], att_all[rows]))
        return features

    def random_init(self):
        """The encoder before MLM (the same random weights): the no-pre-training reference."""
        from mixvlp_ds.model import MixVLP

        m = MixVLP(self.cfg)
        m.load_state_dict(self.init_state)
        return m

    def frozen_lr(self, m) -> dict:
        """Logistic regression on the frozen pooled F_txt of `m` (a diagnostic: is the signal there?)."""
        m.eval()
        f_tr = predict(self.pooled(m, "train"), len(self.train_texts), 256)
        f_te = predict(self.pooled(m, "test"), self.n_test, 256)
        scores = per_finding_logreg(f_tr, self.y_train, f_te, C=1.0, max_iter=3000, class_weight="balanced")
        return metrics.auc_per_finding(self.y_test, scores, CXR14)

    def fine_tune_once(self, m, name: str, seed: int, max_seconds):
        """GAP + linear on F_txt, BCE, the whole encoder trained; AUC per finding on the test reports."""
        o = self.opts
        probe = LinearProbe(self.cfg.hidden, len(CXR14))
        y_tr, f_cls = torch.from_numpy(self.y_train), self.pooled(m, "train")
        stats = fit([m, probe], lambda rows: masked_bce(probe(f_cls(rows)), y_tr[rows]),
                    len(self.train_texts),
                    FitOptions(epochs=o.cls_epochs, batch_size=o.batch_size, lr=o.cls_lr, seed=seed,
                               max_seconds=max_seconds, lengths=self.lengths, name=name))
        f_te = self.pooled(m, "test")
        scores = predict(lambda rows: probe(f_te(rows)), self.n_test, 256)
        return metrics.auc_per_finding(self.y_test, scores, CXR14), stats

    def fine_tune(self, make_model, name: str):
        """`cls_repeats` fine-tunings (head init, dropout and batch order seeded seed, seed+1, ...);
        AUC per finding averaged over them, and the spread of their mean AUCs."""
        o, left = self.opts, self.seconds_left()
        runs = []
        for r in range(o.cls_repeats):
            torch.manual_seed(o.seed + r)
            runs.append(self.fine_tune_once(make_model(), f"{name}-{r}", o.seed + r,
                                            left and left * 0.4 / o.cls_repeats))
        auc = {n: (None if runs[0][0][n] is None else float(np.mean([a[n] for a, _ in runs]))) for n in CXR14}
        means = [metrics.mean_auc(a) for a, _ in runs]
        return auc, {**runs[-1][1], "mean_auc_per_repeat": means, "mean_auc_sd": float(np.std(means))}

    def hash_codes(self):
        """DCH fine-tuning from the pre-trained encoder; the test reports' codes."""
        from mixvlp_ds.model import MixVLP

        left, m = self.seconds_left(), MixVLP.from_pretrained(self.pre_dir)
        fit_opts = hash_fit(self.opts, max_seconds=left and left * 0.9, lengths=self.lengths)
        head, stats = train_hash_head(self.pooled(m, "train"), self.cfg.hidden, self.y_train, self.opts,
                                      fit_opts, extra_modules=[m])
        f_te = self.pooled(m, "test")
        return predict(lambda rows: head(f_te(rows)), self.n_test, 256), stats


def encoder_benchmark(train_texts, y_train, test_texts, y_test, opts: Options, out_dir: Path) -> dict:
    """Every encoder row of the OpenI table (EncoderBench, in its order)."""
    from mixvlp_ds.model import MixVLP

    b = EncoderBench(train_texts, y_train, test_texts, y_test, opts, out_dir)
    mlm = b.pretrain_mlm()
    frozen_auc, random_frozen_auc = b.frozen_lr(b.model), b.frozen_lr(b.random_init())
    auc, cls = b.fine_tune(lambda: MixVLP.from_pretrained(b.pre_dir), "cls")
    scratch_auc, scratch = b.fine_tune(b.random_init, "cls-scratch")
    codes, hstats = b.hash_codes()
    keep = ("steps", "seconds", "last_loss", "stopped_early")
    return {
        "auc": auc, "mean_auc": metrics.mean_auc(auc), "p_at_k": metrics.precision_at_k(codes, y_test, KS),
        "frozen_lr_auc": frozen_auc, "frozen_lr_mean_auc": metrics.mean_auc(frozen_auc),
        "scratch_auc": scratch_auc, "scratch_mean_auc": metrics.mean_auc(scratch_auc),
        "random_frozen_lr_auc": random_frozen_auc,
        "random_frozen_lr_mean_auc": metrics.mean_auc(random_frozen_auc),
        "model": {"hidden": b.cfg.hidden, "layers": b.cfg.layers, "heads": b.cfg.heads, "vocab": len(b.tok),
                  "parameters": sum(p.numel() for p in b.model.parameters())},
        "mlm": {k: mlm[k] for k in ("steps", "seconds", "epoch_losses", "stopped_early")},
        "cls": {k: cls[k] for k in (*keep, "mean_auc_per_repeat", "mean_auc_sd")},
        "cls_scratch": {k: scratch[k] for k in (*keep, "mean_auc_per_repeat", "mean_auc_sd")},
        "hash": {k: hstats[k] for k in keep},
        "seconds": time.time() - b.t_start, "checkpoint": str(b.pre_dir),
    }


# ----------------------------------------------------------------------------- report


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown(res: dict) -> str:
    rows = [("TF-IDF + LR", res["tfidf"]["auc"], res["tfidf"]["mean_auc"])]
    if "encoder" in res:
        e = res["encoder"]
        rows += [("MixVLP txt_only (MLM + fine-tune)", e["auc"], e["mean_auc"]),
                 ("MixVLP frozen F_txt + LR", e["frozen_lr_auc"], e["frozen_lr_mean_auc"])]
        if "scratch_auc" in e:
            rows += [("MixVLP txt_only from random init (no MLM)", e["scratch_auc"], e["scratch_mean_auc"]),
                     ("random-init frozen F_txt + LR", e["random_frozen_lr_auc"],
                      e["random_frozen_lr_mean_auc"])]
    head = "| model | mean AUC | " + " | ".join(CXR14) + " |"
    lines = [f"OpenI text classification, test n={res['n_test']} (train n={res['n_train']}), "
             f"positives in test: " + ", ".join(f"{n} {c}" for n, c in res["test_positives"].items()),
             "", head, "|" + "---|" * (len(CXR14) + 2)]
    spread = {}
    if "encoder" in res:      # the fine-tuned rows: mean ± sd over cls_repeats seeded fine-tunings
        e = res["encoder"]
        spread = {"MixVLP txt_only (MLM + fine-tune)": e["cls"].get("mean_auc_sd"),
                  "MixVLP txt_only from random init (no MLM)": e.get("cls_scratch", {}).get("mean_auc_sd")}
    for name, auc, mean in rows:
        sd = f" ± {spread[name]:.3f}" if spread.get(name) is not None else ""
        lines.append(f"| {name} | {_f(mean)}{sd} | " + " | ".join(_f(auc[n]) for n in CXR14) + " |")
    lines += ["", "Text-query retrieval (64-bit Cauchy hashing, Hamming ranking, exact label match)", "",
              "| model | " + " | ".join(f"P@{k}" for k in KS) + " |", "|" + "---|" * (len(KS) + 1)]
    retr = [("TF-IDF + hash layer", res["tfidf"]["p_at_k"])]
    if "encoder" in res:
        retr.append(("MixVLP txt query", res["encoder"]["p_at_k"]))
    for name, p in retr:
        vals = [p.get(k, p.get(str(k))) for k in KS]         # int keys, or str keys read from JSON
        lines.append(f"| {name} | " + " | ".join(_f(v) for v in vals) + " |")
    return "\n".join(lines)


def run(openi_dir: str | Path, out_dir: str | Path, opts: Options, encoder: bool = True) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_ids, test_ids, texts, labels = load_split(openi_dir)
    tr_texts, te_texts = [texts[i] for i in train_ids], [texts[i] for i in test_ids]
    y_tr = np.stack([labels[i] for i in train_ids])
    y_te = np.stack([labels[i] for i in test_ids])
    res = {"n_train": len(train_ids), "n_test": len(test_ids), "split": "NegBio openi-testset.txt",
           "test_positives": {n: int(y_te[:, k].sum()) for k, n in enumerate(CXR14)},
           "options": opts.__dict__, "torch_threads": torch.get_num_threads()}
    res["tfidf"] = tfidf_baseline(tr_texts, y_tr, te_texts, y_te, opts)
    if encoder:
        res["encoder"] = encoder_benchmark(tr_texts, y_tr, te_texts, y_te, opts, out_dir)
    (out_dir / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (out_dir / "results.md").write_text(markdown(res) + "\n")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds.apps.openi_text", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--openi-dir", required=True,
                   help="OpenI (Indiana University) folder with indiana_reports.csv and NegBio's gold labels "
                        "openi_gld_std14.csv (https://openi.nlm.nih.gov; test data: data/real/openi_iu, "
                        "docs/test_data.md)")
    p.add_argument("--out", default="runs/openi_text")
    p.add_argument("--tfidf-only", action="store_true", help="skip the encoder (seconds instead of minutes)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0 = torch's default; 1 is faster on a shared machine)")
    for name, value in Options().__dict__.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = Options(**{k: getattr(args, k) for k in Options().__dict__})
    res = run(args.openi_dir, args.out, opts, encoder=not args.tfidf_only)
    print(markdown(res))
    print(f"\nresults: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
