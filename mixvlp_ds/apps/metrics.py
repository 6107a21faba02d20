"""Evaluation metrics of the three applications, each a pure function of numpy arrays.

- Classification: ROC AUC per finding (scikit-learn's ``roc_auc_score``) and their mean.
  A finding whose test labels hold only one class has no AUC: it is reported as ``None``
  ("n/a" in tables) and left out of the mean, never replaced by a made-up number.
- Retrieval: precision at K over a Hamming ranking of binary codes, where a hit has exactly
  the same label vector as the query.
- Regeneration: MSE on the 0-255 scale, PSNR in dB, SSIM (scikit-image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

# ----------------------------------------------------------------------------- classification


def auc_per_finding(labels: np.ndarray, scores: np.ndarray,
                    names: Sequence[str]) -> dict[str, float | None]:
    """ROC AUC of every finding.

    labels: (N, K) with 1 positive, 0 negative; NaN (not mentioned / unknown) rows are left out of
            that finding's AUC. Uncertain labels must already be mapped by the caller's policy.
    scores: (N, K) real-valued scores (logits or probabilities).
    Returns {name: auc or None}; None when fewer than one positive and one negative remain.
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must both be (N, {len(names)})")
    out: dict[str, float | None] = {}
    for k, name in enumerate(names):
        keep = ~np.isnan(labels[:, k])
        y, s = labels[keep, k], scores[keep, k]
        if np.any((y != 0) & (y != 1)):
            raise ValueError(f"finding {name}: labels must be 0/1 (or NaN) for AUC, got {np.unique(y)}")
        out[name] = float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else None
    return out


def mean_auc(per_finding: dict[str, float | None]) -> float | None:
    """Mean over the findings that have an AUC (None when none has)."""
    vals = [v for v in per_finding.values() if v is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------- retrieval


def hamming_distances(query_codes: np.ndarray, db_codes: np.ndarray) -> np.ndarray:
    """Hamming distance between ±1 (or 0/1) codes: (Q, bits), (N, bits) -> (Q, N) int."""
    q = np.asarray(query_codes) > 0
    d = np.asarray(db_codes) > 0
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"code lengths differ: {q.shape[1]} vs {d.shape[1]}")
    # Mismatches = bits where exactly one is set: |q| + |d| - 2 <q, d>.
    qi, di = q.astype(np.int64), d.astype(np.int64)
    return qi.sum(1)[:, None] + di.sum(1)[None, :] - 2 * qi @ di.T


def precision_at_k(codes: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10, 50),
                   ties: str = "index") -> dict[int, float]:
    """Leave-one-out retrieval precision: every entry queries all the others.

    codes:  (N, bits) ±1 codes (sign of the hash layer).
    labels: (N, K) binary label vectors; a retrieved entry is relevant iff its whole label vector
            equals the query's (exact match, the paper's definition).
    ties:   the order of entries at the same Hamming distance.
            "index":    by position in the evaluation set (a stable sort): deterministic, and what a
                        plain ``argsort(kind="stable")`` evaluation gives.
            "expected": the expected precision over a uniformly random order inside each tie group
                        (hits ranked strictly before the cut count fully, the tie group straddling the
                        cut contributes its hit rate times the places it takes).
    P@K divides by min(K, N - 1) when fewer than K other entries exist.
    Returns {K: mean precision over queries}.
    """
    codes = np.asarray(codes)
    labels = np.asarray(labels)
    n = codes.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"{n} codes but {labels.shape[0]} label vectors")
    if n < 2:
        raise ValueError("precision@K needs at least 2 entries")
    if ties not in ("index", "expected"):
        raise ValueError(f"ties must be 'index' or 'expected', got {ties!r}")
    dist = hamming_distances(codes, codes)
    same = (labels[:, None, :] == labels[None, :, :]).all(-1)
    sums = {k: 0.0 for k in ks}
    for i in range(n):
        others = np.delete(np.arange(n), i)
        d, rel = dist[i, others], same[i, others].astype(np.float64)
        order = np.argsort(d, kind="stable")
        d, rel = d[order], rel[order]
        for k in ks:
            kk = min(k, n - 1)
            if ties == "index":
                sums[k] += rel[:kk].sum() / kk
            else:
                cut = d[kk - 1]
                before = d < cut
                group = d == cut
                places = kk - before.sum()
                sums[k] += (rel[before].sum() + places * rel[group].mean()) / kk
    return {k: sums[k] / n for k in ks}


# ----------------------------------------------------------------------------- regeneration


def mse_255(original: np.ndarray, regenerated: np.ndarray) -> float:
    """Mean squared error on the 0-255 pixel scale (inputs uint8 or float in 0..255)."""
    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(regenerated, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a - b) ** 2))


def psnr(original: np.ndarray, regenerated: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(R^2 / MSE); +inf for identical images."""
    mse = mse_255(original, regenerated)
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


def ssim(original: np.ndarray, regenerated: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity of two grayscale (H, W) images (scikit-image, 7x7 Gaussian-free window)."""
    from skimage.metrics import structural_similarity

    a = np.asarray(original, dtype=np.float64)
    b = np.asarray(regenerated, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"SSIM needs two (H, W) images of one shape, got {a.shape} and {b.shape}")
    return float(structural_similarity(a, b, data_range=data_range))
