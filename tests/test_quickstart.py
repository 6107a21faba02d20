"""The README's main job, end to end, at a tenth of its size: the real `main()` on synthetic data."""

import json
import os

import pytest

from mixvlp_ds.programs.quickstart import main


@pytest.fixture
def environ_restored():
    """main() pins CPU kernels and threads in os.environ for the subprocesses it may start; later
    tests must not inherit that (torch 2.13's inductor fails on CPU under ATEN_CPU_CAPABILITY=avx2
    on this AVX-512 machine: docs/training.md)."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


def test_quickstart_runs_every_stage_and_skips_them_on_rerun(tmp_path, capsys, environ_restored):
    args = ["--out", str(tmp_path / "run"), "--shards", str(tmp_path / "shards"), "--steps", "4",
            "--scale", "0.05", "--workers", "1"]
    main(args)
    first = capsys.readouterr().out
    assert os.environ.get("ATEN_CPU_CAPABILITY") == "avx2" or os.uname().machine != "x86_64"   # pinned
    run = tmp_path / "run"
    for preset in ("mimic-like", "nih-like", "openi-like"):
        assert json.loads((tmp_path / "shards" / preset / "index.json").read_text())["splits"]
    assert (run / "pretrain" / "model" / "config.json").is_file()
    assert (run / "pretrain" / "checkpoints" / "latest").is_file()
    cls = json.loads((run / "finetune_cls" / "results.json").read_text())
    assert set(cls["results"]) == {"img_only", "txt_only"}
    retrieval = json.loads((run / "finetune_retrieval" / "results.json").read_text())
    assert set(retrieval["results"]) == {"image", "text", "image+text"}
    regen = json.loads((run / "regen" / "results.json").read_text())
    assert regen and list(run.glob("regen/grids/*/*.png"))
    assert "| img_only |" in first and "| query | P@1 |" in first and "PSNR" in first
    # every objective beside its reference, printed and in summary.json (the objectives' keys)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("img_only_auc", "img_only_auc_ci", "txt_only_auc", "tfidf_auc", "pair_auc", "regen_psnr",
                "regen_psnr_neighbour", "regen_psnr_coarse", "seconds", "scratch_img_only_auc",
                "txt_only_lowest_finding"):
        assert key in summary, key
    lo, hi = summary["img_only_auc_ci"]
    assert lo <= summary["img_only_auc"] <= hi and 0.0 <= summary["pair_auc"] <= 1.0
    assert summary["regen_psnr_coarse"] > summary["regen_psnr_neighbour"] > 0   # smooth synthetic images
    assert set(summary["p_at_1_random_codes"]) == {"image", "text", "image+text"}
    assert "each objective beside its reference" in first and "upsampled coarse level" in first
    assert (run / "finetune_cls_scratch" / "results.json").is_file()
    # no labels: zero-shot through the pair head and image <-> report retrieval, each beside random
    zs = json.loads((run / "zeroshot" / "results.json").read_text())["results"]
    assert "random init" in zs and len(zs) == 2
    recalls = [f"i2t_recall{kind}_at_{k}" for kind in ("", "_random") for k in (1, 5, 10)]
    for key in ("zeroshot_img_auc", "zeroshot_img_auc_ci", "zeroshot_scratch_auc", "zeroshot_per_finding",
                *recalls):
        assert summary[key] is not None, key
    assert summary["i2t_recall_at_1"] <= summary["i2t_recall_at_5"] <= summary["i2t_recall_at_10"] <= 1.0
    assert summary["label_efficiency"] is None          # opt-in: --label-efficiency or --long
    assert "zero-shot mean AUC" in first and "image -> report R@1" in first
    main(args)  # everything is there: only the tables are printed again
    second = capsys.readouterr().out
    assert "already written" in second and "already pre-trained" in second
    assert "| img_only |" in second


def test_shards_of_other_records_are_refused_not_reused(tmp_path):
    from mixvlp_ds.programs.quickstart import write_shards

    root = tmp_path / "shards"
    write_shards(root, workers=1, scale=0.01)
    assert write_shards(root, workers=1, scale=0.01)             # the same records: reused
    with pytest.raises(SystemExit, match="other synthetic records"):
        write_shards(root, workers=1, scale=0.01, conspicuity=1.0)
    with pytest.raises(SystemExit, match="other synthetic records"):
        write_shards(root, workers=1, scale=0.01, counts={"mimic-like": 8000})


def test_long_is_the_documented_budget(tmp_path, monkeypatch, environ_restored):
    """--long: its own folders, qs.LONG's mimic-like records, steps and L_co weight."""
    import mixvlp_ds.programs.quickstart as qs
    import mixvlp_ds.train.pretrain as pretrain

    seen = {}

    def fake_shards(root, workers, scale, conspicuity, counts):
        seen.update(root=root, counts=counts)
        return {p: root / p for p in ("mimic-like", "nih-like", "openi-like")}

    def stop(config, out, overrides):
        seen.update(out=out, overrides=overrides)
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(qs, "write_shards", fake_shards)
    monkeypatch.setattr(qs, "train_tokenizer", lambda shards, out: out)
    monkeypatch.setattr(pretrain, "pretrain_once", stop)
    with pytest.raises(KeyboardInterrupt):
        qs.main(["--long"])
    assert seen["root"].name == "shards-long" and seen["counts"] == {"mimic-like": qs.LONG["mimic-like"]}
    assert seen["out"] == qs.Path("runs/quickstart-long/pretrain")
    assert f"train.steps={qs.LONG['steps']}" in seen["overrides"]
    assert f"model.weight_co={qs.LONG['weight_co']}" in seen["overrides"]
