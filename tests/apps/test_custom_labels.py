"""An institution's own label space end to end: a CSV manifest with image files, free-text clinical
notes, three findings of its own (covid, pneumonia, no_finding), patients with several images and
blank splits -> shards (the space recorded in index.json) -> pre-training mixed with an institution
of another label space -> fine-tuning (classification and retrieval) -> evaluation alone; and the
error for a head scored on shards of another space."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.config import ConfigError

LABELS = ("covid", "pneumonia", "no_finding")
NOTES = ("Cough and fever for three days, bilateral ground glass opacities.",
         "Follow-up film. Right lower lobe consolidation, improving.",
         "Routine pre-operative chest radiograph, lungs clear.",
         "Shortness of breath; patchy opacities in both lungs.")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The manifest and its files: 30 patients x 2 images, splits left blank (hash of the patient)."""
    root = tmp_path_factory.mktemp("site")
    (root / "images").mkdir()
    rng = np.random.default_rng(3)
    rows = []
    for p in range(30):
        for k in range(2):
            name = f"images/p{p:02d}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / name)
            covid = int(rng.integers(2))
            rows.append([f"pt{p:02d}", name, NOTES[(p + k) % 4], "", f"st{p:02d}{k}", "PA",
                         covid, int(rng.integers(2)), 1 - covid])
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "image", "report", "split", "study_id", "view", *LABELS])
        w.writerows(rows)
    return root


@pytest.fixture(scope="module")
def site_shards(site, tmp_path_factory):
    from mixvlp_ds.shard.__main__ import main as shard_main

    out = tmp_path_factory.mktemp("site_shards") / "site"
    shard_main(["--source", "csv", "--csv-manifest", str(site / "manifest.csv"),
                "--csv-labels", ",".join(LABELS), "--institution", "site", "--out", str(out),
                "--image-size", "32", "--no-progress"])
    return out


def test_the_custom_space_is_recorded_in_the_shards(site_shards):
    from mixvlp_ds.data.reader import iter_samples

    index = json.loads((site_shards / "index.json").read_text())
    assert index["label_space"] == "custom:covid,pneumonia,no_finding"
    assert index["label_names"] == list(LABELS)
    assert set(index["splits"]) == {"train", "val", "test"}            # blank splits: hashed by patient
    rows = [s for split in index["splits"] for s in iter_samples(str(site_shards), split)]
    assert len(rows) == 60 and all(s["labels"].shape == (3,) for s in rows)
    by_patient = {}
    for split in index["splits"]:
        for s in iter_samples(str(site_shards), split):
            by_patient.setdefault(s["patient_id"], set()).add(split)
    assert all(len(v) == 1 for v in by_patient.values())                # a patient never spans splits


def test_pretrain_finetune_evaluate_in_the_custom_space(site_shards, apps_assets, tmp_path):
    import mixvlp_ds.programs.evaluate as evaluate
    from mixvlp_ds.apps import finetune
    from mixvlp_ds.text.tokenizer import main as tokenizer_main
    from mixvlp_ds.train.pretrain import main as pretrain_main

    tok = tmp_path / "tok"
    tokenizer_main(["train", "--shards", str(site_shards), apps_assets["shards"], "--out", str(tok),
                    "--vocab-size", "400"])
    # pre-training mixes this institution with one of another label space (pre-training ignores labels)
    pretrain_main(["--config", "configs/tiny_cpu.yaml", f"tokenizer={tok}", "data.scenario=custom",
                   f"data.sources=[{{name: site, uri: '{site_shards}', role: paired, rest: drop}}, "
                   f"{{name: other, uri: '{apps_assets['shards']}', role: paired, rest: drop}}]",
                   "data.paired_percent=100", "train.steps=4", "train.warmup_steps=1", "train.progress=false",
                   f"train.output_dir={tmp_path / 'pre'}", "train.ckpt_every=1000"])
    pre = str(tmp_path / "pre" / "model")
    # the exported model carries its P% paired subset, which fine-tuning below reads (100%, seed 0)
    facts = json.loads((tmp_path / "pre" / "model" / "pretraining.json").read_text())
    assert facts == {"subset_seed": 0, "paired_percent": {"site": 100.0, "other": 100.0}}
    summary = finetune.main(["--task", "cls", "--init", pre, f"shards={site_shards}", "epochs=2",
                             "batch_size=8", f"output_dir={tmp_path / 'ft'}"])
    assert summary["label_space"] == "custom:covid,pneumonia,no_finding"
    for row in summary["results"].values():
        assert set(row["auc"]) == set(LABELS)
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["auc"].values())
    table = (tmp_path / "ft" / "results.md").read_text()
    assert table.splitlines()[0] == "| row | mean AUC [95% CI] | covid | pneumonia | no_finding |"
    assert (tmp_path / "ft" / "roc_txt_only.png").stat().st_size > 1000
    head = str(tmp_path / "ft" / "models" / "txt_only")
    ev = evaluate.main(["--task", "cls", "--model", head, "--shards", str(site_shards),
                        "--out", str(tmp_path / "ev")])
    want = summary["results"]["txt_only"]["mean_auc"]
    assert ev["results"]["txt_only"]["mean_auc"] == pytest.approx(want, abs=1e-6)
    # retrieval: a hit is an exact match of the custom label vector
    hashed = finetune.main(["--task", "retrieval", "--init", pre, f"shards={site_shards}", "epochs=1",
                            "queries=[text]", "bits=16", "plots=false", f"output_dir={tmp_path / 'hash'}"])
    assert all(0.0 <= v <= 1.0 for v in hashed["results"]["text"]["p_at_k"].values())
    # a head of this space scored on shards of another is an error naming both
    with pytest.raises(ConfigError, match=r"the head in .*txt_only uses label space "
                                          r"'custom:covid,pneumonia,no_finding', but the evaluation "
                                          r"shards .* are labelled in '(chexpert14|cxr14)'"):
        evaluate.main(["--task", "cls", "--model", head, "--shards", apps_assets["shards"],
                       "--out", str(tmp_path / "ev2")])
    with pytest.raises(ConfigError, match="fine-tune and evaluate in one label space"):
        finetune.main(["--task", "cls", "--init", pre, f"shards={site_shards}",
                       f"eval_shards={apps_assets['shards']}", "epochs=1", f"output_dir={tmp_path / 'ft2'}"])


def test_label_space_options(site, tmp_path):
    import argparse

    from mixvlp_ds.labels import custom_label_space, label_names
    from mixvlp_ds.shard.source import InputLayoutError, RejectLog
    from mixvlp_ds.shard.sources import csv_manifest

    assert label_names(custom_label_space(["a b", "c"])) == ("a b", "c")
    with pytest.raises(ValueError, match="distinct"):
        custom_label_space(["a", "a"])
    (tmp_path / "labels.txt").write_text("covid\npneumonia\n\nno_finding\n")
    parser = argparse.ArgumentParser()
    csv_manifest.add_arguments(parser)
    args = parser.parse_args(["--csv-manifest", str(site / "manifest.csv"), "--csv-labels-file",
                              str(tmp_path / "labels.txt")])
    assert csv_manifest.label_space_of(args) == "custom:covid,pneumonia,no_finding"
    args.csv_labels = "covid"
    with pytest.raises(InputLayoutError, match="not both"):
        csv_manifest.label_space_of(args)
    # without --csv-labels "covid" is no CheXpert finding: the error says how to keep it
    args = parser.parse_args(["--csv-manifest", str(site / "manifest.csv")])
    args.institution = None
    with pytest.raises(InputLayoutError, match=r"unknown column\(s\) \['covid'\].*Pass --csv-labels "
                                               r"NAME,\.\.\. to keep them as the institution's own"):
        list(csv_manifest.build(args).items(RejectLog()))
