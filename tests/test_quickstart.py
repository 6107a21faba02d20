"""The README's main job, end to end, at a tenth of its size: the real `main()` on synthetic data."""

import json

from mixvlp_ds.quickstart import main


def test_quickstart_runs_every_stage_and_skips_them_on_rerun(tmp_path, capsys):
    args = ["--out", str(tmp_path / "run"), "--shards", str(tmp_path / "shards"), "--steps", "4",
            "--scale", "0.1", "--workers", "1"]
    main(args)
    first = capsys.readouterr().out
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
    main(args)  # everything is there: only the tables are printed again
    second = capsys.readouterr().out
    assert "already written" in second and "already pre-trained" in second
    assert "| img_only |" in second
