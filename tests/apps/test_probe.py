"""Linear probes of frozen features and the pair-matching check (mixvlp_ds/apps/probe.py)."""

import json

import numpy as np
import pytest

from mixvlp_ds.apps import probe


def test_probe_auc_reads_a_linear_signal_and_scores_unseen_findings_as_chance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    y = np.stack([(x[:, 0] > 0.3), np.zeros(400, bool)], 1).astype(np.float32)   # finding 2: no positive
    y_ev = y.copy()
    y_ev[:50, 1] = 1                                                             # ... but some in eval
    auc = probe.probe_auc(x[:200], y[:200], x[200:], y_ev[200:], ["a", "b"])
    assert auc["a"] > 0.95
    assert auc["b"] is None                      # eval rows 200.. have no positive for b
    auc = probe.probe_auc(x[200:], y[200:], x[:200], y_ev[:200], ["a", "b"])
    assert auc["b"] == 0.5                       # never saw a positive: constant score


def test_swap_partners_pick_another_study_that_says_something_else():
    labels = np.array([[1, 0], [1, 0], [0, 1], [np.nan, 0], [0, 0]], np.float32)
    other = probe.swap_partners(labels, seed=3)
    y = np.nan_to_num(labels)
    assert all(o != i and (y[o] != y[i]).any() for i, o in enumerate(other))
    same = probe.swap_partners(np.zeros((3, 2)), seed=0)
    assert list(same) == [1, 2, 0]               # nothing differs: the next row


def test_probe_main_writes_tables_per_feature_and_fraction(apps_assets, tmp_path):
    out = tmp_path / "probe"
    res = probe.main(["--model", f"m={apps_assets['model']}", "--random", "--pixels",
                      "--kinds", "gap", "level1", "--text", "--train-shards", apps_assets["shards"],
                      "--eval-shards", apps_assets["shards"], "--fractions", "50", "100",
                      "--seeds", "0", "1", "--pair-match", apps_assets["shards"], "--out", str(out)])
    assert set(res) == {"m gap", "m level1", "random init gap", "random init level1",
                        "pixels level0", "pixels level1", "m F_txt", "random init F_txt", "tf-idf"}
    p50, p100 = res["m level1"]["50"], res["m level1"]["100"]
    assert p100["std"] == 0 and p100["n_train"][0] == p100["n_train"][1]   # P100: the same rows
    assert max(p50["n_train"]) < p100["n_train"][0]
    written = json.loads((out / "probe.json").read_text())
    pm = written["pair_match"]["m"][apps_assets["shards"]]
    assert pm["n"] > 10 and 0 <= pm["auc"] <= 1
    assert "| pixels level0 |" in (out / "probe.md").read_text()


def test_pair_match_needs_a_pair_head(apps_assets, tmp_path):
    from mixvlp_ds.model import MixVLP, ModelConfig

    m = MixVLP(ModelConfig.preset("tiny", arch="aiayn-image"))
    with pytest.raises(ValueError, match="pair-matching head"):
        probe.pair_match_auc(m, tmp_path, apps_assets["shards"])
