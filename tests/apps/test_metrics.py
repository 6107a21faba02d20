"""Metric functions against cases computed by hand."""

import math

import numpy as np
import pytest

from mixvlp_ds.apps import metrics


def test_auc_hand_case_and_single_class_is_none():
    # Pairs (pos, neg): (0.35 > 0.1) (0.35 < 0.4) (0.8 > 0.1) (0.8 > 0.4) -> 3 of 4 ordered: 0.75.
    labels = np.array([[0, 1], [0, 1], [1, 1], [1, 1]], dtype=float)
    scores = np.array([[0.1, 0.3], [0.4, 0.2], [0.35, 0.9], [0.8, 0.1]])
    out = metrics.auc_per_finding(labels, scores, ["A", "B"])
    assert out["A"] == pytest.approx(0.75)
    assert out["B"] is None  # only positives: n/a, not a crash
    assert metrics.mean_auc(out) == pytest.approx(0.75)


def test_auc_ignores_nan_rows_and_rejects_uncertain():
    labels = np.array([[0.0], [np.nan], [1.0], [1.0]])
    scores = np.array([[0.5], [0.9], [0.2], [0.7]])
    # Without the NaN row: pos {0.2, 0.7} vs neg {0.5}: 1 of 2 pairs ordered.
    assert metrics.auc_per_finding(labels, scores, ["A"])["A"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="0/1"):
        metrics.auc_per_finding(np.array([[0.0], [-1.0], [1.0]]), np.zeros((3, 1)), ["A"])
    assert metrics.mean_auc({"A": None}) is None


# Four 4-bit codes and label vectors; distances worked out in the comments.
CODES = np.array([[1, 1, 1, 1],     # A
                  [1, 1, 1, -1],    # B: d(A)=1
                  [1, 1, -1, -1],   # C: d(A)=2, d(B)=1
                  [1, 1, 1, -1]])   # D: d(A)=1, d(B)=0, d(C)=1
LABELS = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])


def test_hamming_distances():
    d = metrics.hamming_distances(CODES, CODES)
    assert d.tolist() == [[0, 1, 2, 1], [1, 0, 1, 0], [2, 1, 0, 1], [1, 0, 1, 0]]


def test_precision_at_k_ties_by_index():
    # A ranks B(1) D(1) C(2) -> rel 0 1 1; B ranks D(0) A(1) C(1) -> 0 0 0;
    # C ranks B(1) D(1) A(2) -> 0 1 1;     D ranks B(0) A(1) C(1) -> 0 1 1.
    p = metrics.precision_at_k(CODES, LABELS, ks=(1, 2, 3, 50))
    assert p[1] == pytest.approx(0.0)
    assert p[2] == pytest.approx((0.5 + 0 + 0.5 + 0.5) / 4)
    assert p[3] == pytest.approx((2 / 3 + 0 + 2 / 3 + 2 / 3) / 4)
    assert p[50] == pytest.approx(p[3])  # K > N-1 divides by N-1


def test_precision_at_k_expected_over_ties():
    # P@1: A's first place is a tie {B, D} with hit rate 1/2; same for C; B and D are 0.
    p = metrics.precision_at_k(CODES, LABELS, ks=(1, 2), ties="expected")
    assert p[1] == pytest.approx((0.5 + 0 + 0.5 + 0) / 4)
    assert p[2] == pytest.approx(0.375)


def test_precision_at_k_is_deterministic_and_validates():
    rng = np.random.default_rng(0)
    codes = np.sign(rng.standard_normal((30, 8)))
    labels = rng.integers(0, 2, (30, 3))
    assert metrics.precision_at_k(codes, labels) == metrics.precision_at_k(codes, labels)
    with pytest.raises(ValueError):
        metrics.precision_at_k(codes[:1], labels[:1])


def test_mse_psnr_ssim_known_images():
    a = np.zeros((16, 16), np.uint8)
    b = np.full((16, 16), 10, np.uint8)
    assert metrics.mse_255(a, b) == pytest.approx(100.0)
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 100))  # 28.13 dB
    assert metrics.psnr(a, a) == math.inf
    # Constant images: variances and covariance are 0, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    # with C1 = (0.01 * 255)^2.
    c1 = (0.01 * 255) ** 2
    x, y = np.full((32, 32), 100.0), np.full((32, 32), 110.0)
    assert metrics.ssim(x, y) == pytest.approx((2 * 100 * 110 + c1) / (100 ** 2 + 110 ** 2 + c1))
    img = np.random.default_rng(0).integers(0, 256, (32, 32)).astype(np.uint8)
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.ssim(img, 255 - img) < 0
