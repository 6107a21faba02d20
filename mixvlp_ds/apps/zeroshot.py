"""What a pre-trained UWOX model does with no labels at all: zero-shot classification and image <->
report retrieval, both through the pair-matching head (eqs. 5-8) that pre-training trained.

    prompts = load_prompts("chexpert14")                     # the shipped sentences, or a YAML file
    res = zeroshot(model, tokenizer, rows, prompts)          # AUC per finding, mean, bootstrap interval
    res = report_retrieval(model, tokenizer, rows)           # R@1/5/10, median rank, vs random scores

Zero-shot classification (as CheXzero, MedCLIP or BioViL score a model): for each finding, an
image's score is the pair head's mean logit against the sentences that state the finding minus its
mean logit against the sentences that rule it out. No label is used; the labels only score it.

Retrieval: every test image against every test report. A hit for an image is its own report, or a
report with the very same words (a terse "Normal chest." is many images' report, and no scorer can
tell identical texts apart); the rank of an image's first hit gives Recall@K and the median rank.
The paper's own hit (any report with the same label vector) is reported as a precision at K beside
it, as the hash retrieval's P@K. Random scores on the same rows are the reference.

Scoring is one matrix product: the head's logit is linear in a (2, C) summary of each image and of
each report (`PairMatchingHead.image_summary` / `text_summary`), so N images x M sentences costs
N + M encoder passes and one (N, 2C) x (2C, M) product, with no loop over pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixvlp_ds.config import ConfigError

KS = (1, 5, 10)


@dataclass(frozen=True)
class Prompts:
    """For each finding of a label space, in the space's order: sentences that state it, and sentences
    that rule it out."""

    label_space: str
    names: tuple[str, ...]
    positive: tuple[tuple[str, ...], ...]
    negative: tuple[tuple[str, ...], ...]

    def sentences(self) -> tuple[list[str], np.ndarray]:
        """Every sentence once, and the (sentences, findings) weights that turn the logits of those
        sentences into scores: +1/|pos| on a finding's positives, -1/|neg| on its negatives."""
        texts: list[str] = []
        index: dict[str, int] = {}
        for group in (*self.positive, *self.negative):
            for t in group:
                index.setdefault(t, len(texts))
                if len(texts) == index[t]:
                    texts.append(t)
        weights = np.zeros((len(texts), len(self.names)), np.float32)
        for k, (pos, neg) in enumerate(zip(self.positive, self.negative, strict=True)):
            for t in pos:
                weights[index[t], k] += 1.0 / len(pos)
            for t in neg:
                weights[index[t], k] -= 1.0 / len(neg)
        return texts, weights


def shipped_prompts(label_space: str) -> Path:
    """The prompt file that ships for a built-in label space."""
    from mixvlp_ds.shipped import folder

    path = folder("prompts") / f"{label_space}.yaml"
    if not path.is_file():
        raise ConfigError(f"no shipped zero-shot prompts for label space {label_space!r} (shipped: "
                          f"{sorted(p.stem for p in folder('prompts').glob('*.yaml'))}); write a YAML "
                          "file that maps each finding to its positive and negative sentences and pass "
                          "it with --prompts")
    return path


def load_prompts(label_space: str, path: str | Path | None = None) -> Prompts:
    """The prompts for every finding of `label_space`, from `path` or the shipped file. The file:
        findings:
          <finding>: {positive: [sentence, ...], negative: [sentence, ...]}
    A finding of the label space missing from the file, or with no sentence on either side, is an
    error that names it; findings the label space does not have are errors too (a typo)."""
    import yaml

    from mixvlp_ds.labels import label_names

    names = label_names(label_space)
    if not names:
        raise ConfigError(f"label space {label_space!r} has no findings: nothing to classify")
    file = Path(path) if path else shipped_prompts(label_space)
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{file}: cannot read the prompts: {e}") from e
    findings = (doc or {}).get("findings") if isinstance(doc, dict) else None
    if not isinstance(findings, dict):
        raise ConfigError(f"{file}: expected a mapping 'findings: {{<finding>: {{positive: [...], "
                          "negative: [...]}}}}'")
    missing = [n for n in names if n not in findings]
    if missing:
        raise ConfigError(f"{file}: no prompts for finding(s) {missing} of label space {label_space!r}")
    unknown = sorted(set(findings) - set(names))
    if unknown:
        raise ConfigError(f"{file}: finding(s) {unknown} are not in label space {label_space!r} "
                          f"{list(names)}")
    pos, neg = [], []
    for n in names:
        entry = findings[n] if isinstance(findings[n], dict) else {}
        sides = [tuple(str(t) for t in (entry.get(side) or [])) for side in ("positive", "negative")]
        for side, texts in zip(("positive", "negative"), sides, strict=True):
            if not texts or not all(t.strip() for t in texts):
                raise ConfigError(f"{file}: finding {n!r} needs one or more non-empty {side} sentences")
        pos.append(sides[0])
        neg.append(sides[1])
    return Prompts(label_space, tuple(names), tuple(pos), tuple(neg))


def pair_head_of(model):
    """The model's pair-matching head; a clear error for a model that has none."""
    head = getattr(model, "pair_head", None)
    if head is None:
        raise ConfigError(f"this model (fusion={model.cfg.fusion!r}) has no pair-matching head: zero-shot "
                          "scoring and image-report retrieval need a UWOX model (fusion: uwox), whose "
                          "head pre-training trains. A UNIT model fuses image and report inside the "
                          "encoder and is evaluated by fine-tuning (--task cls / retrieval)")
    return head


@torch.no_grad()
def image_summaries(model, pyramids: list[list[np.ndarray]], batch_size: int = 64) -> torch.Tensor:
    """(N, 2, C) pair-head summaries of N images (each a list of pyramid levels, finest first)."""
    head = pair_head_of(model).eval()
    model.eval()
    out = []
    for start in range(0, len(pyramids), batch_size):
        chunk = pyramids[start:start + batch_size]
        levels = [torch.from_numpy(np.stack([p[lv] for p in chunk])) for lv in range(len(chunk[0]))]
        e_img = torch.cat(model.encode_levels(model.image_levels(levels)), 1)
        out.append(head.image_summary(e_img).float())
    return torch.cat(out)


@torch.no_grad()
def text_summaries(model, tokenizer, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    """(M, 2, C) pair-head summaries of M reports or sentences."""
    from mixvlp_ds.data.collate import tokenize

    head = pair_head_of(model).eval()
    model.eval()
    out = []
    for start in range(0, len(texts), batch_size):
        ids, att = tokenize(tokenizer, texts[start:start + batch_size], model.cfg.max_text_len, False)
        e_txt = model.encode_words(ids, att)
        out.append(head.text_summary(e_txt, att.bool().to(e_txt.device)).float())
    return torch.cat(out)


def pair_logits(model, image_summary: torch.Tensor, text_summary: torch.Tensor) -> np.ndarray:
    """(N, 2, C) x (M, 2, C) -> (N, M) logits, head.all_pairs on the summaries."""
    with torch.no_grad():
        return pair_head_of(model).score(image_summary, text_summary).float().cpu().numpy()


def zeroshot_scores(model, tokenizer, pyramids: list, prompts: Prompts, batch_size: int = 64) -> np.ndarray:
    """(N images, K findings): mean logit over a finding's positive sentences minus over its negatives."""
    texts, weights = prompts.sentences()
    logits = pair_logits(model, image_summaries(model, pyramids, batch_size),
                         text_summaries(model, tokenizer, texts, batch_size))
    return logits @ weights


def zeroshot(model, tokenizer, rows: dict, prompts: Prompts, batch_size: int = 64) -> dict:
    """AUC per finding, their mean and its bootstrap 95% interval over images. rows: "pyramid"
    (list of N pyramids) and "labels" (N, K) in 1 / 0 / -1 / NaN (uncertain and unmentioned count as
    negative, the fine-tuned img_only's policy)."""
    from mixvlp_ds.apps import metrics
    from mixvlp_ds.apps.classification import apply_label_policy
    from mixvlp_ds.apps.references import bootstrap_mean_auc

    scores = zeroshot_scores(model, tokenizer, rows["pyramid"], prompts, batch_size)
    y = apply_label_policy(rows["labels"], "zeros")
    auc = metrics.auc_per_finding(y, scores, list(prompts.names))
    lo, hi = bootstrap_mean_auc(y, scores)
    return {"auc": auc, "mean_auc": metrics.mean_auc(auc), "ci": [lo, hi], "n": len(y),
            "names": list(prompts.names), "scores": scores, "labels": y}


def ranks_of_first_hit(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(Q,) rank (1 = best) of each query's best-scored relevant candidate; ties with a non-relevant
    candidate count against the query (its rank is 1 + the candidates scored at least as high that are
    not relevant). scores, relevant: (Q, C); every query needs a relevant candidate."""
    if not relevant.any(1).all():
        raise ValueError("every query needs at least one relevant candidate")
    best = np.where(relevant, scores, -np.inf).max(1, keepdims=True)           # (Q, 1)
    return 1 + ((scores >= best) & ~relevant).sum(1)


def recall_at(ranks: np.ndarray, ks=KS) -> dict[int, float]:
    return {k: float((ranks <= k).mean()) for k in ks}


def label_precision_at(scores: np.ndarray, same_labels: np.ndarray, ks=KS) -> dict[int, float]:
    """The paper's hit: the share of the top-K candidates whose label vector equals the query's."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(same_labels, order, 1)
    return {k: float(hits[:, :k].mean()) for k in ks}


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray, same_labels: np.ndarray, ks=KS) -> dict:
    ranks = ranks_of_first_hit(scores, relevant)
    return {"recall_at": recall_at(ranks, ks), "median_rank": float(np.median(ranks)),
            "label_precision_at": label_precision_at(scores, same_labels, ks)}


def random_reference(relevant: np.ndarray, same_labels: np.ndarray, ks=KS, draws: int = 20,
                     seed: int = 0) -> dict:
    """The same figures for random scores (mean over `draws` random score matrices)."""
    rng = np.random.default_rng(seed)
    runs = [retrieval_metrics(rng.random(relevant.shape), relevant, same_labels, ks) for _ in range(draws)]
    return {"recall_at": {k: float(np.mean([r["recall_at"][k] for r in runs])) for k in ks},
            "median_rank": float(np.mean([r["median_rank"] for r in runs])),
            "label_precision_at": {k: float(np.mean([r["label_precision_at"][k] for r in runs])) for k in ks}}


def report_retrieval(model, tokenizer, rows: dict, ks=KS, batch_size: int = 64) -> dict:
    """Image -> report and report -> image retrieval over the paired rows ("pyramid", "texts",
    "labels"), each beside random scores."""
    from mixvlp_ds.apps.classification import binary_labels

    texts = rows["texts"]
    logits = pair_logits(model, image_summaries(model, rows["pyramid"], batch_size),
                         text_summaries(model, tokenizer, texts, batch_size))        # (images, reports)
    same_words = np.array([[a == b for b in texts] for a in texts])
    y = binary_labels(rows["labels"])
    same_labels = (y[:, None, :] == y[None, :, :]).all(-1)
    out = {"n": len(texts), "distinct_reports": len(set(texts))}
    for name, s in (("image_to_report", logits), ("report_to_image", logits.T)):
        out[name] = retrieval_metrics(s, same_words, same_labels, ks)
        out[name]["random"] = random_reference(same_words, same_labels, ks)
    return out


def load_rows(uri: str, split: str, label_space: str | None = None, need_text: bool = False) -> dict:
    """The labelled images of a split ("pyramid", "labels", "names", and "texts" with need_text: only
    rows with both), as zeroshot / report_retrieval read them."""
    from mixvlp_ds.data.reader import iter_samples, read_index
    from mixvlp_ds.labels import label_names

    space = label_space or read_index(uri).get("label_space", "none")
    rows = [s for s in iter_samples(uri, split, label_space=space)
            if s["pyramid"] is not None and (s["text"] or not need_text)]
    if not rows:
        what = "images with reports" if need_text else "images"
        raise ValueError(f"{uri}: split {split!r} has no {what}")
    out = {"pyramid": [r["pyramid"] for r in rows], "label_space": space, "names": list(label_names(space)),
           "labels": np.stack([np.asarray(r["labels"], np.float32) for r in rows])}
    if need_text:
        out["texts"] = [r["text"] for r in rows]
    return out


def zeroshot_table(results: dict[str, dict]) -> str:
    """Markdown: one column per model, one row per finding, the mean with its interval last."""
    from mixvlp_ds.apps.tables import fmt, markdown_table

    models = list(results)
    names = results[models[0]]["names"]
    rows = [[n, *(fmt(results[m]["auc"].get(n)) for m in models)] for n in names]
    rows.append(["**mean [95% CI]**", *(f"{fmt(results[m]['mean_auc'])} [{fmt(results[m]['ci'][0])}, "
                                        f"{fmt(results[m]['ci'][1])}]" for m in models)])
    return markdown_table(["zero-shot AUC", *models], rows)


def retrieval_table(results: dict[str, dict], ks=KS) -> str:
    """Markdown: R@K, median rank and label P@K per direction, each beside random scores."""
    from mixvlp_ds.apps.tables import fmt, markdown_table

    rows = []
    for model, res in results.items():
        for d in ("image_to_report", "report_to_image"):
            r = res[d]
            for who, v in ((model, r), ("random scores", r["random"])):
                rows.append([d.replace("_", " "), who, *(fmt(v["recall_at"][k]) for k in ks),
                             f"{v['median_rank']:.1f}", *(fmt(v["label_precision_at"][k]) for k in ks)])
    return markdown_table(["direction", "scores", *(f"R@{k}" for k in ks), "median rank",
                           *(f"label P@{k}" for k in ks)], rows)
