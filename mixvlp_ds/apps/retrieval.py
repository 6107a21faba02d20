"""Retrieval: 64-bit hash codes of pooled features, Hamming ranking, P@K (paper Table 3).

Query kinds (each with its own hash head, trained with the Cauchy hashing loss of `hashing.py`):
    image       pooled F_img of the image
    text        pooled F_txt of the report
    image+text  [pooled F_img ; pooled F_txt] (concatenated, 2C -> bits)
Every test entry queries all other test entries (database = the test set, as the paper); a hit
has exactly the query's binary label vector (classification's label policy, 'ignore' read as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixvlp_ds.apps import metrics

QUERY_SIDES = {"image": "img", "text": "txt", "image+text": "both"}
KS = (1, 5, 10, 50)


def evaluate_codes(codes: np.ndarray, labels: np.ndarray, ks: Sequence[int] = KS,
                   ties: str = "index") -> dict:
    """{"p_at_k": {K: P@K}, "n": N, "bits": bits} for ±1 codes (N, bits) and binary labels (N, K)."""
    return {"p_at_k": metrics.precision_at_k(codes, labels, ks, ties=ties), "n": int(codes.shape[0]),
            "bits": int(codes.shape[1])}


def random_code_baseline(labels: np.ndarray, bits: int = 64, seed: int = 0, ks: Sequence[int] = KS) -> dict:
    """P@K of random codes on the same labels: the chance level a trained code must beat."""
    rng = np.random.default_rng(seed)
    codes = np.where(rng.standard_normal((labels.shape[0], bits)) >= 0, 1, -1)
    return evaluate_codes(codes, labels, ks)
