"""What each objective's result means: the reference it must beat, computed on the same rows.

    lo, hi = bootstrap_mean_auc(labels, scores)              # 95% interval over evaluation rows
    auc = tfidf_mean_auc(train_texts, y_train, test_texts, y_test)   # bag of words + logistic regression
    p1 = random_codes_p_at_1(labels)                         # 64 random bits per row

The main job (`python -m mixvlp_ds quickstart`) prints each of its results beside these, and the regeneration
references (neighbour mean, upsampled coarse level) of apps/regeneration.py.
"""

from __future__ import annotations

import numpy as np


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """ROC AUC of one finding (y 0/1, no NaN) by the rank-sum statistic, ties counted half: the
    value of sklearn's roc_auc_score at a fraction of its per-call cost (the bootstrap calls it
    ~10^4 times)."""
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def mean_auc_of(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mean ROC AUC over the findings with both classes among the rows (labels 0/1/NaN): the value
    of apps.metrics.mean_auc(auc_per_finding(...)), by the rank statistic above."""
    values = []
    for k in range(labels.shape[1]):
        keep = ~np.isnan(labels[:, k])
        auc = _auc(labels[keep, k], scores[keep, k])
        if auc is not None:
            values.append(auc)
    return float(np.mean(values)) if values else None


def bootstrap_mean_auc(labels: np.ndarray, scores: np.ndarray, n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile interval of the mean AUC when the evaluation rows (images) are resampled with
    replacement n times. labels, scores: (N, K). (None, None) when no resample has a finding with
    both classes."""
    rng = np.random.default_rng(seed)
    rows = len(labels)
    draws = []
    for _ in range(n):
        pick = rng.integers(0, rows, rows)
        value = mean_auc_of(labels[pick], scores[pick])
        if value is not None:
            draws.append(value)
    if not draws:
        return None, None
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return float(lo), float(hi)


def tfidf_mean_auc(train_texts: list[str], y_train: np.ndarray, test_texts: list[str],
                   y_test: np.ndarray, seed: int = 0) -> tuple[float | None, np.ndarray]:
    """TF-IDF + one logistic regression per finding (apps/openi_text's reference) fitted on the
    training rows: (mean AUC on the test rows, test scores). y_*: (N, K) 0/1 (NaN read as 0 to fit)."""
    from mixvlp_ds.apps.openi_text import tfidf_classify

    scores, *_ = tfidf_classify(train_texts, np.nan_to_num(y_train), test_texts, seed)
    return mean_auc_of(y_test, scores), scores


def random_codes_p_at_1(labels: np.ndarray, bits: int = 64, seed: int = 0) -> float:
    """P@1 of random codes: what a hash head that learnt nothing scores on these rows."""
    from mixvlp_ds.apps.retrieval import random_code_baseline

    return float(random_code_baseline(labels, bits, seed, ks=(1,))["p_at_k"][1])
