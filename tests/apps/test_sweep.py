"""The scenario sweep: cells run once, a re-run skips finished cells, an interrupted cell reruns."""

import json
import shutil

import pytest

from mixvlp_ds import sweep


@pytest.fixture()
def fake_pretrain(monkeypatch, apps_assets):
    """Pre-training replaced by copying a saved tiny model (the real one is tested in tests/train);
    records each call so the test sees which cells pre-trained."""
    calls = []

    def run_pretrain(cfg, scenario, percent, out):
        calls.append((scenario, percent))
        shutil.copytree(apps_assets["model"], out / "model")
        return out / "model"

    monkeypatch.setattr(sweep, "run_pretrain", run_pretrain)
    return calls


def _config(apps_assets, out):
    return sweep.SweepConfig(
        output_dir=str(out), scenarios=["baseline1", "mixup2"], fractions=[50, 100],
        tokenizer=apps_assets["tokenizer"],
        finetune_overrides=[f"shards={apps_assets['shards']}", "epochs=1", "sides=[img]", "plots=false"])


def test_sweep_runs_cells_then_resumes(apps_assets, fake_pretrain, tmp_path):
    cfg = _config(apps_assets, tmp_path)
    cells = sweep.run_sweep(cfg)
    assert set(cells) == {"baseline1", "mixup2"} and set(cells["mixup2"]) == {"50", "100"}
    assert fake_pretrain == [("mixup2", 50), ("mixup2", 100)]       # baseline1 never pre-trains
    r = json.loads((tmp_path / "baseline1" / "P50" / "result.json").read_text())
    assert r["metric_row"] == "img_only" and r["n_train"] < 52      # 50% of the patients
    table = (tmp_path / "table2.md").read_text()
    assert "| scenario | P50% | P100% |" in table and "| mixup2 |" in table
    assert (tmp_path / "table2.png").stat().st_size > 1000

    # Re-run: every cell is finished, nothing pre-trains or fine-tunes again, same table.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/P*/result.json")}
    assert sweep.run_sweep(cfg) == cells
    assert len(fake_pretrain) == 2
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/P*/result.json")} == before

    # A cell interrupted after pre-training (no result.json) reruns only its fine-tuning.
    (tmp_path / "mixup2" / "P100" / "result.json").unlink()
    (tmp_path / "mixup2" / "P100" / "pretrain" / "model").rename(tmp_path / "keep")
    fake_pretrain.clear()
    sweep.run_sweep(cfg)
    assert fake_pretrain == [("mixup2", 100)]
    assert (tmp_path / "mixup2" / "P100" / "result.json").is_file()


def test_sweep_config_validation():
    from mixvlp_ds.config import ConfigError
    with pytest.raises(ConfigError, match="unknown"):
        sweep.SweepConfig(scenarios=["mixup3"]).validate()
    with pytest.raises(ConfigError, match="fractions"):
        sweep.SweepConfig(fractions=[0]).validate()
