"""The label-efficiency curve: pre-trained and random-init fine-tunings at several labelled budgets,
several draws each, their mean ± sd, the table and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixvlp_ds.apps.finetune import FinetuneConfig
from mixvlp_ds.apps.label_efficiency import bands_apart, efficiency_table, label_efficiency
from mixvlp_ds.config import load_config
from mixvlp_ds.shipped import folder


def test_budgets_draws_and_reuse(apps_assets, tmp_path):
    out = tmp_path / "eff"
    config, model = folder("configs") / "finetune_tiny.yaml", Path(apps_assets["model"])
    cfg = load_config(FinetuneConfig, config, ["epochs=1", f"shards={apps_assets['shards']}"])
    table = label_efficiency(cfg, model, out, budgets=(50.0, 100.0), subsets=2)
    assert [e["percent"] for e in table] == [50.0, 100.0]
    full = table[1]
    assert full["rows"] == 52 and 0 < table[0]["rows"] < 52            # all 52 train rows; a patient subset
    for e in table:
        for key in ("pretrained_img", "scratch_img", "pretrained_txt", "scratch_txt"):
            assert 0.0 <= e[key] <= 1.0 and e[f"{key}_sd"] >= 0.0 and len(e[f"{key}_draws"]) == 2
    # below 100%: two patient subsets; at 100%: one subset, two fine-tuning seeds
    cfg = [json.loads((out / "pretrained" / p / f"draw{k}" / "results.json").read_text())["config"]
           for p in ("P50", "P100") for k in (0, 1)]
    assert [(c["subset_seed"], c["seed"]) for c in cfg] == [(0, 0), (1, 0), (0, 0), (0, 1)]
    assert (out / "label_efficiency.png").is_file() and json.loads((out / "results.json").read_text())
    md = efficiency_table(table)
    assert "img_only pre-trained" in md and "50%" in md and md.count("\n") == 3
    # a finished run at 100% stands in for its draw
    reuse = {name: out / name / "P100" / "draw0" for name in ("pretrained", "scratch")}
    again = label_efficiency(load_config(FinetuneConfig, config), model, tmp_path / "eff2", budgets=(100.0,),
                             subsets=1, reuse=reuse)
    assert again[0]["pretrained_img"] == pytest.approx(full["pretrained_img_draws"][0])
    assert not (tmp_path / "eff2" / "pretrained").exists()


def test_bands_apart_needs_the_whole_bands_apart():
    e = {"pretrained_img": 0.70, "pretrained_img_sd": 0.01, "scratch_img": 0.65, "scratch_img_sd": 0.03}
    assert bands_apart(e, "img")
    e["scratch_img_sd"] = 0.05
    assert not bands_apart(e, "img")
    e.update(pretrained_img=0.60, scratch_img_sd=0.0)
    assert not bands_apart(e, "img")
