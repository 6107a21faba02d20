"""Fine-tune and evaluate end to end on tiny synthetic shards (classification, retrieval, regeneration)."""

import json
import math
from pathlib import Path

import pytest

import mixvlp_ds.programs.evaluate as evaluate
from mixvlp_ds.apps import finetune
from mixvlp_ds.labels import CHEXPERT14


def test_cls_from_checkpoint_then_evaluate_alone(apps_assets, tmp_path):
    out = tmp_path / "ft"
    summary = finetune.main(["--task", "cls", "--init", apps_assets["model"],
                             f"shards={apps_assets['shards']}", "epochs=2", "batch_size=16",
                             f"output_dir={out}"])
    res = summary["results"]
    assert set(res) == {"img_only", "txt_only"}          # UWOX rows of Table 1
    for row in res.values():
        assert set(row["auc"]) == set(CHEXPERT14)
        vals = [v for v in row["auc"].values() if v is not None]
        assert vals and all(0.0 <= v <= 1.0 for v in vals)
        assert row["n_eval"] == 28    # the test split of the fixture
        lo, hi = row["ci"]                # the bootstrap interval of the mean, in the table too
        assert lo <= row["mean_auc"] <= hi
        assert f"{row['mean_auc']:.3f} [{lo:.3f}, {hi:.3f}]" in (out / "results.md").read_text()
    assert (out / "results.md").read_text().startswith("| row | mean AUC [95% CI] |")
    assert (out / "roc_img_only.png").stat().st_size > 1000
    # Evaluation alone reproduces the fine-tuning run's numbers from the saved weights.
    ev = evaluate.main(["--task", "cls", "--model", str(out / "models" / "txt_only"), "--shards",
                        apps_assets["shards"], "--out", str(tmp_path / "ev")])
    again = ev["results"]["txt_only"]["mean_auc"]
    assert again == pytest.approx(res["txt_only"]["mean_auc"], abs=1e-6)


def test_percent_selects_patients(apps_assets, tmp_path):
    from mixvlp_ds.apps.rows import labelled_samples

    part = labelled_samples(apps_assets["shards"], "train", percent=30)
    full = labelled_samples(apps_assets["shards"], "train")
    assert 0 < len(part) < len(full)
    from mixvlp_ds.data.subset import in_paired_subset
    assert all(in_paired_subset(s["patient_id"], 30, 0) for s in part)


def test_retrieval_from_scratch_and_evaluate(apps_assets, tmp_path):
    out = tmp_path / "hash"
    summary = finetune.main(["--task", "retrieval", "--init", "", f"tokenizer={apps_assets['tokenizer']}",
                             f"shards={apps_assets['shards']}", "epochs=1", "queries=[text,image+text]",
                             f"output_dir={out}", "bits=16"])
    res = summary["results"]
    assert set(res) == {"text", "image+text"}
    for r in res.values():
        assert r["bits"] == 16 and set(map(int, r["p_at_k"])) == {1, 5, 10, 50}
        assert all(0.0 <= v <= 1.0 for v in r["p_at_k"].values())
    assert (out / "p_at_k.png").is_file()
    ev = evaluate.main(["--task", "retrieval", "--model", str(out / "models" / "text"), "--shards",
                        apps_assets["shards"], "--out", str(tmp_path / "ev")])
    assert ev["results"]["text"]["p_at_k"] == res["text"]["p_at_k"]
    # the reference is printed beside each query: random codes on the same rows
    table = (out / "results.md").read_text()
    assert "| text: random codes |" in table and "| image+text: random codes |" in table
    assert "| text: random codes |" in (tmp_path / "ev" / "results.md").read_text()


def test_regeneration_table_and_grids(apps_assets, tmp_path):
    ev = evaluate.main(["--task", "regen", "--checkpoint", apps_assets["model"],
                        "--shards", apps_assets["shards"], "--num-images", "6", "--grids", "2",
                        "--out", str(tmp_path)])
    row = ev["results"]["ms_B4"]
    assert row["n"] == 6 and row["patches"] == 64 + 16 + 4
    assert 0 < row["mse"] < 255 ** 2 and math.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1
    assert len(row["grids"]) == 2 and all(Path(g).stat().st_size > 0 for g in row["grids"])
    table = json.loads((tmp_path / "results.json").read_text())
    assert "ms_B4" in table["results"]
    assert "| ms_B4 | 84 |" in (tmp_path / "results.md").read_text()


def test_bad_config_is_a_clear_error(apps_assets):
    from mixvlp_ds.config import ConfigError
    with pytest.raises(ConfigError, match="uncertain"):
        finetune.main([f"shards={apps_assets['shards']}", "uncertain=maybe"])
    with pytest.raises(ConfigError, match="tokenizer"):
        finetune.main([f"shards={apps_assets['shards']}", "--init", ""])


def test_unit_rows_from_scratch(apps_assets, tmp_path):
    """UNIT fuses the pair: its Table 1 rows are img+txt and txt+img."""
    summary = finetune.main(["--task", "cls", "--init", "", f"tokenizer={apps_assets['tokenizer']}",
                             f"shards={apps_assets['shards']}", "model_arch=unit", "epochs=1", "plots=false",
                             f"output_dir={tmp_path}"])
    assert set(summary["results"]) == {"img+txt", "txt+img"}
    assert all(r["mean_auc"] is None or 0 <= r["mean_auc"] <= 1 for r in summary["results"].values())
