"""Fine-tuning's P% labelled subset: read from the pre-trained run's pretraining.json unless the
config or the command line sets it, the defaults where nothing says, and a log line naming which."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mixvlp_ds.apps import finetune
from mixvlp_ds.apps.finetune import FinetuneConfig, resolve_subset
from mixvlp_ds.apps.rows import labelled_samples
from mixvlp_ds.config import load_config
from mixvlp_ds.model import MixVLP
from mixvlp_ds.model.export import read_pretraining


def exported(src: str, dest: Path, facts: dict | None) -> Path:
    """A copy of the model directory `src`, saved again with `facts` as its pre-training facts."""
    model = MixVLP.from_pretrained(src)
    model.save_pretrained(dest, pretraining=facts)
    shutil.copytree(Path(src) / "tokenizer", dest / "tokenizer")
    return dest


def write_facts(d: Path, seed: int, percents: dict) -> None:
    (d / "pretraining.json").write_text(json.dumps({"subset_seed": seed, "paired_percent": percents}))


def test_save_pretrained_writes_the_facts_and_read_pretraining_reads_them(apps_assets, tmp_path):
    facts = {"subset_seed": 3, "paired_percent": {"mimic": 30.0}}
    d = exported(apps_assets["model"], tmp_path / "m", facts)
    assert json.loads((d / "pretraining.json").read_text()) == facts
    assert read_pretraining(d) == facts
    assert read_pretraining(apps_assets["model"]) is None           # an export without them
    (d / "pretraining.json").write_text('{"paired_percent": 30}')
    with pytest.raises(ValueError, match="pretraining.json: expected paired_percent"):
        read_pretraining(d)


def test_unset_takes_the_pretrained_runs_subset(tmp_path):
    write_facts(tmp_path, 2, {"mimic": 30})
    cfg, origin, line = resolve_subset(FinetuneConfig(init=str(tmp_path)), tmp_path)
    assert (cfg.percent, cfg.subset_seed) == (30.0, 2)
    where = f"from the pre-trained run, {tmp_path}/pretraining.json"
    assert line == f"subset: percent=30 subset_seed=2 ({where})"
    assert origin == {"percent": where, "subset_seed": where}


def test_set_to_the_default_is_set_not_unset(tmp_path):
    """percent: 100 written in the YAML wins over the pre-trained run's 30; subset_seed, unset, does not."""
    write_facts(tmp_path, 2, {"mimic": 30})
    (tmp_path / "ft.yaml").write_text(f"init: {tmp_path}\npercent: 100\n")
    loaded = load_config(FinetuneConfig, tmp_path / "ft.yaml")
    assert loaded.percent == 100.0 and loaded.subset_seed is None
    cfg, origin, line = resolve_subset(loaded, tmp_path)
    assert (cfg.percent, cfg.subset_seed) == (100.0, 2)
    assert origin["percent"] == "set in the config"
    assert line.startswith("subset: percent=100 (set in the config), subset_seed=2 (from the pre-trained run")
    assert load_config(FinetuneConfig).percent is None                  # nothing written: unset


def test_defaults_where_nothing_says(tmp_path):
    cfg, _, line = resolve_subset(FinetuneConfig(), None)
    assert (cfg.percent, cfg.subset_seed) == (100.0, 0)
    assert "the default: from scratch" in line
    cfg, _, line = resolve_subset(FinetuneConfig(init=str(tmp_path)), tmp_path)   # no pretraining.json
    assert (cfg.percent, cfg.subset_seed) == (100.0, 0) and "has no pretraining.json" in line
    # paired sources with different P: no one subset to follow; the seed still comes from the run
    write_facts(tmp_path, 4, {"a": 1, "b": 5})
    cfg, origin, _ = resolve_subset(FinetuneConfig(init=str(tmp_path)), tmp_path)
    assert (cfg.percent, cfg.subset_seed) == (100.0, 4)
    assert "paired sources had P%" in origin["percent"]


def test_finetune_trains_on_the_pretrained_subset_unless_told(apps_assets, tmp_path, capsys):
    shards = apps_assets["shards"]
    facts = {"subset_seed": 1, "paired_percent": {"x": 40.0}}
    model = exported(apps_assets["model"], tmp_path / "pre", facts)
    subset = [s for s in labelled_samples(shards, "train", percent=40, subset_seed=1) if s["text"]]
    every = [s for s in labelled_samples(shards, "train") if s["text"]]
    assert 0 < len(subset) < len(every)
    common = ["--task", "cls", "--init", str(model), f"shards={shards}", "sides=[txt]",
              "epochs=1", "plots=false"]
    read = finetune.main([*common, f"output_dir={tmp_path / 'read'}"])
    assert read["results"]["txt_only"]["n_train"] == len(subset)
    assert (read["percent"], read["subset_seed"]) == (40.0, 1)
    said = f"[finetune] subset: percent=40 subset_seed=1 (from the pre-trained run, {model}/pretraining.json)"
    assert said in capsys.readouterr().out
    told = finetune.main([*common, "percent=100", f"output_dir={tmp_path / 'told'}"])
    assert told["results"]["txt_only"]["n_train"] == len(every)
    assert told["subset_from"]["percent"] == "set in the config"
