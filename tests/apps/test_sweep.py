"""The scenario sweep: cells run once, a re-run skips finished cells, an interrupted cell reruns."""

import json
import shutil

import pytest

import mixvlp_ds.programs.sweep as sweep


@pytest.fixture()
def fake_pretrain(monkeypatch, apps_assets):
    """Pre-training replaced by copying a saved tiny model (the real one is tested in tests/train);
    records each call so the test sees which cells pre-trained."""
    calls = []

    def run_pretrain(cfg, scenario, percent, seed, out):
        calls.append((scenario, percent, seed))
        shutil.copytree(apps_assets["model"], out / "model")
        return out / "model"

    monkeypatch.setattr(sweep, "run_pretrain", run_pretrain)
    return calls


def _config(apps_assets, out, **kw):
    base = dict(output_dir=str(out), scenarios=["baseline1", "mixup2"], fractions=[50, 100],
                tokenizer=apps_assets["tokenizer"],
                finetune_overrides=[f"shards={apps_assets['shards']}", "epochs=1", "sides=[img]",
                                    "plots=false"])
    return sweep.SweepConfig(**{**base, **kw})


def test_sweep_runs_cells_then_resumes(apps_assets, fake_pretrain, tmp_path):
    cfg = _config(apps_assets, tmp_path)
    cells = sweep.run_sweep(cfg)["img_only"]
    assert set(cells) == {"baseline1", "mixup2"} and set(cells["mixup2"]) == {"50", "100"}
    assert fake_pretrain == [("mixup2", 50, 0), ("mixup2", 100, 0)]   # baseline1 never pre-trains
    r = json.loads((tmp_path / "baseline1" / "P50" / "seed0" / "result.json").read_text())
    assert r["rows"]["img_only"]["n_train"] < 52                      # 50% of the patients
    assert cells["baseline1"]["50"]["per_seed"] == [r["rows"]["img_only"]["mean_auc"]]
    table = (tmp_path / "table2.md").read_text()
    assert "| scenario | P50% | P100% |" in table and "| mixup2 |" in table
    assert (tmp_path / "table2_img_only.png").stat().st_size > 1000

    # Re-run: every cell is finished, nothing pre-trains or fine-tunes again, same table.
    done = "*/P*/seed*/result.json"
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob(done)}
    assert sweep.run_sweep(cfg)["img_only"] == cells
    assert len(fake_pretrain) == 2
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob(done)} == before

    # A cell interrupted after pre-training (no result.json) reruns only its fine-tuning.
    cell = tmp_path / "mixup2" / "P100" / "seed0"
    (cell / "result.json").unlink()
    (cell / "pretrain" / "model").rename(tmp_path / "keep")
    fake_pretrain.clear()
    sweep.run_sweep(cfg)
    assert fake_pretrain == [("mixup2", 100, 0)]
    assert (cell / "result.json").is_file()


def test_sweep_seeds_give_mean_and_spread(apps_assets, fake_pretrain, tmp_path):
    """Two replicates: each draws its own 50% subset, the table shows mean ± sd over them."""
    cfg = _config(apps_assets, tmp_path, scenarios=["baseline1"], fractions=[50], seeds=[0, 1])
    cell = sweep.run_sweep(cfg)["img_only"]["baseline1"]["50"]
    per_seed = [json.loads((tmp_path / "baseline1" / "P50" / f"seed{s}" / "result.json").read_text())
                for s in (0, 1)]
    assert cell["per_seed"] == [r["rows"]["img_only"]["mean_auc"] for r in per_seed]
    assert abs(cell["mean"] - sum(cell["per_seed"]) / 2) < 1e-12
    assert per_seed[0]["rows"]["img_only"]["n_train"] != per_seed[1]["rows"]["img_only"]["n_train"] or \
        cell["std"] > 0                                                # different subsets
    assert "± " in (tmp_path / "table2.md").read_text()


def test_sweep_rows_must_match_the_sides(apps_assets, fake_pretrain, tmp_path):
    cfg = _config(apps_assets, tmp_path, scenarios=["baseline1"], fractions=[100], metric_rows=["txt_only"])
    with pytest.raises(RuntimeError, match="txt_only"):
        sweep.run_sweep(cfg)


def test_sweep_config_validation():
    from mixvlp_ds.config import ConfigError
    with pytest.raises(ConfigError, match="unknown"):
        sweep.SweepConfig(scenarios=["mixup3"]).validate()
    with pytest.raises(ConfigError, match="fractions"):
        sweep.SweepConfig(fractions=[0]).validate()
    with pytest.raises(ConfigError, match="seeds"):
        sweep.SweepConfig(seeds=[]).validate()


def test_sweep_runs_cells_in_parallel_processes(apps_assets, tmp_path):
    """jobs=2: cells run in spawned processes (baseline1 only: nothing to pre-train)."""
    cfg = _config(apps_assets, tmp_path, scenarios=["baseline1"], jobs=2)
    cells = sweep.run_sweep(cfg)["img_only"]["baseline1"]
    assert set(cells) == {"50", "100"}
    assert all((tmp_path / "baseline1" / f"P{p}" / "seed0" / "result.json").is_file() for p in (50, 100))


def test_sweep_probe_adds_frozen_feature_rows_to_finished_cells(apps_assets, fake_pretrain, tmp_path):
    """probe: true on a finished sweep probes each cell's starting encoder without retraining."""
    cfg = _config(apps_assets, tmp_path, fractions=[100])
    sweep.run_sweep(cfg)
    fine_tuned = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/P*/seed*/finetune/results.json")}
    cfg.probe = True
    cells = sweep.run_sweep(cfg)
    assert set(cells) == {"img_only", "img_only, frozen probe"}
    assert set(cells["img_only, frozen probe"]) == {"baseline1", "mixup2"}
    assert fake_pretrain == [("mixup2", 100, 0)]                      # nothing pre-trained again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/P*/seed*/finetune/results.json")} == fine_tuned
    r = json.loads((tmp_path / "mixup2" / "P100" / "seed0" / "result.json").read_text())
    assert 0 <= r["probe"]["img_only"] <= 1
    assert "frozen probe" in (tmp_path / "table2.md").read_text()
    assert (tmp_path / "table2_img_only_probe.png").is_file()
