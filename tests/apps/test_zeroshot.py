"""Zero-shot classification and image <-> report retrieval through the pair head: the batched scores
equal the head on each pair, the prompt files and their errors, retrieval metrics on known matrices,
and `python -m mixvlp_ds evaluate --task zeroshot | report_retrieval` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mixvlp_ds.apps import zeroshot as zs
from mixvlp_ds.config import ConfigError


@pytest.fixture(scope="module")
def tiny(apps_assets):
    from mixvlp_ds.model import MixVLP
    from mixvlp_ds.text.tokenizer import load_tokenizer

    torch.manual_seed(1)
    model = MixVLP.from_pretrained(apps_assets["model"]).eval()
    with torch.no_grad():   # a head with weights on every input, not the init's
        model.pair_head.linear.weight.normal_(0, 0.3)
        model.pair_head.linear.bias.fill_(0.2)
    return model, load_tokenizer(apps_assets["tokenizer"])


def test_zeroshot_scores_equal_the_pair_head_on_each_image_sentence_pair(tiny, apps_assets):
    from mixvlp_ds.data.collate import tokenize

    model, tok = tiny
    rows = zs.load_rows(apps_assets["shards"], "test")
    prompts = zs.load_prompts("chexpert14")
    pyramids = rows["pyramid"][:5]
    scores = zs.zeroshot_scores(model, tok, pyramids, prompts, batch_size=2)       # (5, 14)
    assert scores.shape == (5, len(prompts.names))
    # the head's forward, one (image, sentence) at a time, averaged as the module doc says
    with torch.no_grad():
        expected = np.zeros_like(scores)
        for i, pyr in enumerate(pyramids):
            levels = [torch.from_numpy(lv[None]) for lv in pyr]
            e_img = torch.cat(model.encode_levels(model.image_levels(levels)), 1)
            for k, (pos, neg) in enumerate(zip(prompts.positive, prompts.negative, strict=True)):
                def logit(text, e_img=e_img):
                    ids, att = tokenize(tok, [text], model.cfg.max_text_len, False)
                    return float(model.pair_head(model.encode_words(ids, att), att.bool(), e_img)[0])
                expected[i, k] = np.mean([logit(t) for t in pos]) - np.mean([logit(t) for t in neg])
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)


def test_shipped_prompts_cover_their_label_spaces():
    from mixvlp_ds.labels import label_names

    for space in ("chexpert14", "cxr14"):
        p = zs.load_prompts(space)
        assert p.names == label_names(space)
        assert all(len(pos) >= 1 for pos in p.positive) and all(len(neg) >= 1 for neg in p.negative)
        texts, weights = p.sentences()
        assert len(set(texts)) == len(texts)
        np.testing.assert_allclose(weights.clip(0, None).sum(0), 1.0, rtol=1e-6)   # mean over positives
        np.testing.assert_allclose(weights.clip(None, 0).sum(0), -1.0, rtol=1e-6)  # minus mean over negatives


def test_a_finding_missing_from_the_prompt_file_is_named(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("findings:\n  covid: {positive: [Covid pneumonia.], negative: [No pneumonia.]}\n")
    with pytest.raises(ConfigError, match=r"no prompts for finding\(s\) \['no_finding'\]"):
        zs.load_prompts("custom:covid,no_finding", f)
    f.write_text("findings:\n  covid: {positive: [Covid pneumonia.]}\n")
    with pytest.raises(ConfigError, match="finding 'covid' needs one or more non-empty negative"):
        zs.load_prompts("custom:covid", f)
    f.write_text("findings:\n  covid: {positive: [a.], negative: [b.]}\n"
                 "  covdi: {positive: [a.], negative: [b.]}\n")
    with pytest.raises(ConfigError, match=r"\['covdi'\] are not in label space"):
        zs.load_prompts("custom:covid", f)
    with pytest.raises(ConfigError, match="no shipped zero-shot prompts.*--prompts"):
        zs.load_prompts("custom:covid")


def test_a_unit_model_says_it_has_no_pair_head(apps_assets):
    from mixvlp_ds.model import MixVLP, ModelConfig

    unit = MixVLP(ModelConfig.preset("tiny", arch="unit", vocab_size=300))
    rows = zs.load_rows(apps_assets["shards"], "test")
    with pytest.raises(ConfigError, match="no pair-matching head.*UWOX"):
        zs.zeroshot_scores(unit, None, rows["pyramid"][:2], zs.load_prompts("chexpert14"))


def test_an_empty_split_or_folder_is_a_clear_error(apps_assets, tmp_path):
    from mixvlp_ds.programs.evaluate import main

    with pytest.raises(ValueError, match="no split 'val'"):
        zs.load_rows(apps_assets["shards"], "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="index.json: not found"):
        main(["--task", "zeroshot", "--model", apps_assets["model"], "--shards", str(tmp_path / "empty"),
              "--out", str(tmp_path / "out")])


def test_retrieval_metrics_on_a_hand_made_matrix():
    # 4 queries x 4 candidates; query q's relevant candidate is q (query 3: candidates 2 and 3, the
    # same words). Ranks of the first hit: 1, 3 (two non-relevant above), 2 (tie counts against), 1.
    scores = np.array([[0.9, 0.1, 0.2, 0.3],
                       [0.8, 0.5, 0.7, 0.1],
                       [0.4, 0.6, 0.6, 0.0],
                       [0.0, 0.1, 0.2, 0.9]])
    relevant = np.eye(4, dtype=bool)
    relevant[3, 2] = True
    ranks = zs.ranks_of_first_hit(scores, relevant)
    assert ranks.tolist() == [1, 3, 2, 1]
    assert zs.recall_at(ranks, (1, 2, 3)) == {1: 0.5, 2: 0.75, 3: 1.0}
    same_labels = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], bool)
    res = zs.retrieval_metrics(scores, relevant, same_labels, ks=(1, 2))
    assert res["median_rank"] == 1.5
    # top-1: 0, 0, 1 (tie: stable order), 3 -> same labels 1, 1, 0, 1; top-2: {0, 3} 1/2, {0, 2} 1/2,
    # {1, 2} 1/2, {3, 2} 2/2
    assert res["label_precision_at"] == {1: 0.75, 2: 0.625}
    rand = zs.random_reference(np.eye(50, dtype=bool), np.eye(50, dtype=bool), ks=(1, 10), draws=40)
    assert abs(rand["recall_at"][10] - 10 / 50) < 0.04 and abs(rand["median_rank"] - 25.5) < 5
    with pytest.raises(ValueError, match="relevant candidate"):
        zs.ranks_of_first_hit(scores, np.zeros((4, 4), bool))


def test_evaluate_zeroshot_and_report_retrieval_end_to_end(apps_assets, tmp_path):
    from mixvlp_ds.programs.evaluate import main

    out = tmp_path / "zs"
    summary = main(["--task", "zeroshot", "--model", apps_assets["model"], "--random-init",
                    "--shards", apps_assets["shards"], "--out", str(out)])
    res = summary["results"]
    assert set(res) == {apps_assets["model"], "random init"}
    for r in res.values():
        assert set(r["auc"]) == set(zs.load_prompts("chexpert14").names)
        lo, hi = r["ci"]
        assert lo <= r["mean_auc"] <= hi
    assert json.loads((out / "results.json").read_text())["task"] == "zeroshot"
    assert "zero-shot AUC" in (out / "results.md").read_text() and list(out.glob("roc_zeroshot_*.png"))
    out = tmp_path / "rr"
    summary = main(["--task", "report_retrieval", "--model", apps_assets["model"], "--shards",
                    apps_assets["shards"], "--out", str(out)])
    r = summary["results"][apps_assets["model"]]
    for d in ("image_to_report", "report_to_image"):
        assert set(r[d]["recall_at"]) == {1, 5, 10} and 1 <= r[d]["median_rank"] <= r["n"]
        assert r[d]["random"]["recall_at"][10] == pytest.approx(10 / r["n"], abs=0.06)
    assert "median rank" in (out / "results.md").read_text()


def test_custom_label_space_with_a_prompt_file_runs_through(apps_assets, tmp_path):
    """An institution's own findings (custom:...): shards, a prompt file, zero-shot results."""
    import csv

    from PIL import Image

    from mixvlp_ds.programs.evaluate import main
    from mixvlp_ds.shard.__main__ import main as shard_main

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "image", "report", "split", "study_id", "view", "covid", "no_finding"])
        for p in range(16):
            image = rng.integers(0, 256, (40, 40), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / f"images/{p}.png")
            w.writerow([f"pt{p}", f"images/{p}.png", "Patchy opacities.", "test", f"st{p}", "PA", p % 2,
                        1 - p % 2])
    shards = tmp_path / "site"
    shard_main(["--source", "csv", "--csv-manifest", str(tmp_path / "manifest.csv"), "--csv-labels",
                "covid,no_finding", "--out", str(shards), "--image-size", "32", "--no-progress"])
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("findings:\n"
                       "  covid: {positive: [Bilateral ground glass opacities., Covid pneumonia.],\n"
                       "          negative: [The lungs are clear.]}\n"
                       "  no_finding: {positive: [Normal chest.], negative: [Patchy opacities.]}\n")
    out = tmp_path / "out"
    summary = main(["--task", "zeroshot", "--model", apps_assets["model"], "--shards", str(shards),
                    "--prompts", str(prompts), "--out", str(out)])
    r = summary["results"][apps_assets["model"]]
    assert r["names"] == ["covid", "no_finding"] and r["n"] == 16
    assert all(0.0 <= v <= 1.0 for v in r["auc"].values())
    assert "covid" in (out / "results.md").read_text()
    (tmp_path / "bad.yaml").write_text("findings:\n  covid: {positive: [a.], negative: [b.]}\n")
    with pytest.raises(ConfigError, match=r"no prompts for finding\(s\) \['no_finding'\]"):
        main(["--task", "zeroshot", "--model", apps_assets["model"], "--shards", str(shards),
              "--prompts", str(tmp_path / "bad.yaml"), "--out", str(out)])
