"""Cauchy hashing loss, regeneration masks, label policy, and the TF-IDF baseline on real OpenI reports."""

import math

import numpy as np
import pytest
import torch

from mixvlp_ds.apps import hashing
from mixvlp_ds.apps.classification import apply_label_policy, masked_bce
from mixvlp_ds.apps.regeneration import disjoint_masks


def test_pair_similarity_is_exact_label_match():
    y = torch.tensor([[1, 0, 1], [1, 0, 1], [1, 0, 0], [0, 0, 0]])
    s = hashing.pair_similarity(y)
    assert s.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_cauchy_distance_is_hamming_on_binary_codes():
    a = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1]])
    # bits/2 (1 - cos): identical -> 0, two of four bits flipped -> cos 0 -> 2 = Hamming distance.
    assert hashing.cauchy_distance(a).tolist() == [[0.0, 2.0], [2.0, 0.0]]


def test_cauchy_loss_by_hand_and_its_direction():
    gamma = 2.0
    h = torch.tensor([[1.0, 1, 1, 1], [1, -1, 1, -1]])
    y_same = torch.tensor([[1], [1]])
    y_diff = torch.tensor([[1], [0]])
    # One pair (both directions), d = 2; similar: log(1 + d/g) = log 2; dissimilar: log(1 + g/d) = log 2.
    # Weights: all pairs are of one kind, w = |S| / |S_kind| = 1. |h| = 1 -> quantisation 0.
    same = hashing.cauchy_hashing_loss(h, y_same, gamma=gamma)
    assert same["cce"].item() == pytest.approx(math.log(2.0))
    assert same["quant"].item() == pytest.approx(0.0, abs=1e-6)
    closer = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, -1]])          # d = 1
    assert hashing.cauchy_hashing_loss(closer, y_same, gamma)["cce"] < same["cce"]  # similar: closer wins
    assert hashing.cauchy_hashing_loss(closer, y_diff, gamma)["cce"] > same["cce"]   # dissimilar: worse
    soft = hashing.cauchy_hashing_loss(h * 0.5 + 0.1, y_same, gamma)
    assert soft["quant"] > 0


def test_hash_head_trains_with_tanh_and_tests_with_sign():
    torch.manual_seed(0)
    head = hashing.HashHead(8, bits=16)
    x = torch.randn(32, 8)
    y = (x[:, :1] > 0).long()                       # two classes, learnable from feature 0
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = hashing.cauchy_hashing_loss(head(x), y)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    head.eval()
    codes = head(x)
    assert set(codes.unique().tolist()) <= {-1.0, 1.0}
    from mixvlp_ds.apps.metrics import precision_at_k
    assert precision_at_k(codes.numpy(), y.numpy(), ks=(5,))[5] > 0.9


def test_disjoint_masks_cover_every_patch_once():
    m = disjoint_masks(784, 0.15, torch.Generator().manual_seed(0))
    assert m.shape == (7, 784)
    assert m.sum(0).tolist() == [1] * 784                       # each patch masked exactly once
    assert all(abs(int(c) - 112) <= 1 for c in m.sum(1))          # ~15% each pass


def test_label_policy():
    y = np.array([[1, 0, -1, np.nan]], np.float32)
    assert apply_label_policy(y, "zeros").tolist() == [[1, 0, 0, 0]]
    assert apply_label_policy(y, "ones").tolist() == [[1, 0, 1, 0]]
    ign = apply_label_policy(y, "ignore")
    assert np.isnan(ign[0, 2]) and ign[0, 3] == 0
    logits = torch.zeros(1, 4)
    assert masked_bce(logits, torch.from_numpy(ign)).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError):
        apply_label_policy(y, "maybe")


def test_tfidf_baseline_on_real_openi_split(shared_data):
    """The bag-of-words reference of docs/applications.md on NegBio's split (771 test reports)."""
    from mixvlp_ds.apps import metrics
    from mixvlp_ds.apps.openi_text import load_split, tfidf_classify
    from mixvlp_ds.labels import CXR14

    train, test, texts, labels = load_split(shared_data / "openi_iu")
    assert (len(train), len(test)) == (3080, 771)
    y_tr = np.stack([labels[i] for i in train])
    y_te = np.stack([labels[i] for i in test])
    scores, *_ = tfidf_classify([texts[i] for i in train], y_tr, [texts[i] for i in test])
    auc = metrics.auc_per_finding(y_te, scores, CXR14)
    assert auc["Hernia"] is None                       # no positive in the test set: n/a
    assert metrics.mean_auc(auc) > 0.9


def test_openi_encoder_benchmark_reports_pretrained_and_random_init_rows(shared_data, tmp_path):
    """The encoder part of the OpenI text benchmark on a slice of the real reports, tiny sizes:
    MLM, frozen probes and fine-tuning from both the pre-trained and the pre-MLM random weights."""
    from mixvlp_ds.apps.openi_text import Options, encoder_benchmark, load_split, markdown

    train, test, texts, labels = load_split(shared_data / "openi_iu")
    train, test = train[:300], test[:150]
    y_tr = np.stack([labels[i] for i in train])
    y_te = np.stack([labels[i] for i in test])
    opts = Options(vocab_size=400, hidden=16, layers=1, heads=2, intermediate=32, max_len=64,
                   mlm_epochs=1, cls_epochs=1, cls_repeats=2, hash_epochs=1, batch_size=32)
    e = encoder_benchmark([texts[i] for i in train], y_tr, [texts[i] for i in test], y_te, opts, tmp_path)
    for key in ("mean_auc", "frozen_lr_mean_auc", "scratch_mean_auc", "random_frozen_lr_mean_auc"):
        assert 0.0 <= e[key] <= 1.0, key
    assert e["mlm"]["steps"] == e["cls"]["steps"] == e["cls_scratch"]["steps"] == 10   # 300 / 32
    # MLM moved the weights: the pre-trained and random-init frozen probes see different features.
    assert e["frozen_lr_auc"] != e["random_frozen_lr_auc"]
    reps = e["cls"]["mean_auc_per_repeat"]                  # two seeded fine-tunings, averaged
    assert len(reps) == 2 and abs(e["mean_auc"] - sum(reps) / 2) < 1e-9
    md = markdown({"tfidf": {"auc": e["auc"], "mean_auc": e["mean_auc"], "p_at_k": e["p_at_k"]},
                   "encoder": e, "n_test": 150, "n_train": 300, "test_positives": {}})
    assert "from random init (no MLM)" in md
