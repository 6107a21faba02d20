"""The references the main job prints beside its results (apps/references.py)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mixvlp_ds.apps import metrics
from mixvlp_ds.apps.references import _auc, bootstrap_mean_auc, mean_auc_of, random_codes_p_at_1


def data(seed=0, n=300, k=5, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(float)
    scores = np.round(y * signal + rng.normal(0, 1, (n, k)), 1)   # rounded: ties
    y[rng.random((n, k)) < 0.2] = np.nan                          # "not mentioned"
    return y, scores


def test_rank_auc_is_sklearns_with_ties():
    y, s = data()
    for k in range(y.shape[1]):
        keep = ~np.isnan(y[:, k])
        assert _auc(y[keep, k], s[keep, k]) == pytest.approx(roc_auc_score(y[keep, k], s[keep, k]), abs=1e-12)
    assert _auc(np.zeros(4), np.arange(4.0)) is None
    names = [str(k) for k in range(y.shape[1])]
    sklearn_mean = metrics.mean_auc(metrics.auc_per_finding(y, s, names))
    assert mean_auc_of(y, s) == pytest.approx(sklearn_mean, abs=1e-12)


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_rows():
    y, s = data(n=300)
    lo, hi = bootstrap_mean_auc(y, s, n=300)
    assert lo < mean_auc_of(y, s) < hi
    y4, s4 = data(n=1200)
    lo4, hi4 = bootstrap_mean_auc(y4, s4, n=300)
    assert hi4 - lo4 < hi - lo
    assert bootstrap_mean_auc(np.zeros((5, 2)), np.ones((5, 2)), n=10) == (None, None)


def test_random_codes_score_the_share_of_identical_label_vectors():
    y = np.zeros((400, 3))
    y[:200, 0] = 1                         # two label vectors, half the rows each
    assert random_codes_p_at_1(y) == pytest.approx(0.5, abs=0.08)
