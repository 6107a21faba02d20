"""CSV manifest source ("csv"): a generated institution with every kind of bad row."""

import argparse
import csv
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.labels import CHEXPERT14, CXR14
from mixvlp_ds.shard.source import InputLayoutError, RejectLog
from mixvlp_ds.shard.sources import csv_manifest
from mixvlp_ds.shard.sources.csv_manifest import CSVManifestSource

HEADER = ["Patient ID", "image", "report", "report_file", "split", "study_id", "view",
          "Pleural Effusion", "cardiomegaly", "No_Finding"]


def write_manifest(folder, rows, header=HEADER, name="manifest.csv", encoding="utf-8"):
    with open(folder / name, "w", newline="", encoding=encoding) as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return folder / name


@pytest.fixture
def site(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "reports").mkdir()
    for n in range(1, 7):
        Image.fromarray(np.full((20, 16), 30 * n, np.uint8)).save(tmp_path / "img" / f"im{n}.png")
    (tmp_path / "reports" / "r1.txt").write_text("INDICATION: cough\n\nFINDINGS: Small left effusion.\n\n"
                                                 "IMPRESSION: Effusion.")
    (tmp_path / "reports" / "r2.txt").write_bytes("Heart size normal \u2013 no effusion.".encode("cp1252"))
    (tmp_path / "reports" / "empty.txt").write_text("  \n")
    rows = [
        ["p1", "img/im1.png", "", "reports/r1.txt", "train", "s1", "PA", "1", "0.0", ""],      # 2
        ["p1", "img/im2.png", "", "reports/r2.txt", "validate", "s2", "AP", "-1.0", "", "0"],  # 3
        ["p2", "img/im3.png", "No acute process.", "", "", "s3", "PA", "", "", "1"],  # 4 blank split
        ["p3", "", "Lungs clear.\n\nNo effusion.", "", "test", "s4", "", "0", "0", "1"],  # 5 text only
        ["p4", "img/im4.png", "", "reports/empty.txt", "test", "s5", "PA", "", "", ""],  # 6 empty report
        ["p1", "img/im1.png", "dup", "", "train", "s1", "PA", "", "", ""],  # 7 duplicate
        ["p5", "img/nope.png", "x", "", "train", "s6", "PA", "", "", ""],  # 8 image missing
        ["p5", "img/im5.png", "", "reports/nope.txt", "train", "s7", "PA", "", "", ""],  # 9 report missing
        ["p5", "img/im6.png", "", "", "holdout", "s8", "PA", "", "", ""],  # 10 bad split
        ["p6", "img/im6.png", "", "", "train", "s9", "PA", "maybe", "", ""],  # 11 bad label
        ["", "img/im6.png", "", "", "train", "s10", "PA", "", "", ""],  # 12 no patient
        ["p7", "", "", "", "train", "s11", "", "", "", ""],  # 13 nothing
        ["p8", "img/im6.png"],  # 14 malformed
        ["", "", "", "", "", "", "", "", "", ""],  # blank: skipped
    ]
    return tmp_path, write_manifest(tmp_path, rows)


def listing(source):
    rejects = RejectLog()
    return list(source.items(rejects)), rejects


def logged(source, path):
    rejects = RejectLog(path=path)
    items = list(source.items(rejects))
    rejects.close()
    return items, rejects


def test_rows_reports_labels_and_rejects(site):
    folder, manifest = site
    items, rejects = listing(CSVManifestSource(manifest))
    assert [it.meta["study_id"] for it in items] == ["s1", "s2", "s3", "s4", "s5"]
    s1, s2, s3, s4, s5 = items
    assert s1.key == "csv/s1/im1" and s1.image_path == str(folder / "img" / "im1.png")
    assert s1.text == "Small left effusion. Effusion."                 # sectioned: INDICATION dropped
    assert s1.labels == {**dict.fromkeys(CHEXPERT14), "Pleural Effusion": 1, "Cardiomegaly": 0}
    assert s1.meta == {"institution": "csv", "patient_id": "p1", "study_id": "s1", "view": "PA",
                       "split": "train"}
    assert s2.text == "Heart size normal \u2013 no effusion." and s2.meta["split"] == "val"
    assert s2.labels["Pleural Effusion"] == -1 and s2.labels["No Finding"] == 0
    assert s3.meta["split"] in ("train", "val", "test") and s3.text == "No acute process."
    assert s4.image_path is None and s4.text == "Lungs clear. No effusion."   # headerless: kept whole
    assert s4.meta["source_file"] == f"{manifest}:5"
    assert s5.text is None and s5.image_path                          # empty report file: image kept
    assert dict(rejects.counts) == {
        "empty_report": 2, "duplicate_key": 1, "image_missing": 1, "report_file_missing": 1,
        "unknown_split": 1, "bad_label_value": 1, "missing_patient_id": 1, "malformed_row": 1}
    assert rejects.notes == {"report decoded as cp1252": 1}


def test_unknown_columns_are_an_error_unless_ignored(site):
    folder, _ = site
    manifest = write_manifest(folder, [["p1", "img/im1.png", "ok", "train", "x", "1"]],
                              header=["patient_id", "image", "report", "split", "Scanner", "Mass"],
                              name="m2.csv")
    with pytest.raises(InputLayoutError, match=r"unknown column\(s\) \['Scanner', 'Mass'\]"):
        listing(CSVManifestSource(manifest))
    # In the cxr14 space "Mass" is a finding; only "Scanner" is unknown.
    with pytest.raises(InputLayoutError, match=r"unknown column\(s\) \['Scanner'\]"):
        listing(CSVManifestSource(manifest, label_space="cxr14"))
    items, rejects = listing(CSVManifestSource(manifest, label_space="cxr14", ignore_extra_columns=True))
    assert items[0].labels == {**dict.fromkeys(CXR14), "Mass": 1}
    assert rejects.notes == {"ignored manifest column 'Scanner'": 1}
    items, _ = listing(CSVManifestSource(manifest, label_space="none", ignore_extra_columns=True))
    assert items[0].labels is None


def test_layout_errors(tmp_path):
    with pytest.raises(InputLayoutError, match="does not exist"):
        CSVManifestSource(tmp_path / "none.csv")
    m = write_manifest(tmp_path, [["img.png", "train"]], header=["image", "split"])
    with pytest.raises(InputLayoutError, match="needs a patient_id column"):
        listing(CSVManifestSource(m))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputLayoutError, match="empty file"):
        listing(CSVManifestSource(tmp_path / "empty.csv"))
    with pytest.raises(InputLayoutError, match="--csv-manifest"):
        csv_manifest.build(argparse.Namespace(csv_manifest=None))


def test_non_utf8_manifest_is_decoded(tmp_path):
    m = write_manifest(tmp_path, [["p1", "", "Épanchement pleural \u2013 gauche.", "train"]],
                       header=["patient_id", "image", "report", "split"], encoding="cp1252")
    items, rejects = listing(CSVManifestSource(m))
    assert items[0].text == "Épanchement pleural \u2013 gauche."
    assert rejects.notes == {"manifest decoded as cp1252": 1}


def test_build_and_end_to_end_shards(site, tmp_path):
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset

    _, manifest = site
    parser = argparse.ArgumentParser()
    csv_manifest.add_arguments(parser)
    args = parser.parse_args(["--csv-manifest", str(manifest)])
    args.institution, args.seed = "hospital-b", 0
    source = csv_manifest.build(args)
    assert source.name == "csv" and source.label_space == "chexpert14"
    out = tmp_path / "out"
    summary = write_dataset(source, out, ShardOptions(image_size=16, progress=False))
    assert summary["total_samples"] == 5 and summary["rejects_total"] == 9
    logged = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(logged) == 9 and all(r["reason"] and r["file"] for r in logged)
    assert any(r["file"].endswith("img/nope.png") for r in logged)
    fields = {}
    for entry in json.loads((out / "index.json").read_text())["splits"].values():
        for shard in entry["shards"]:
            with tarfile.open(out / shard["file"]) as tar:
                for m in tar:
                    key, field = m.name.split(".", 1)
                    fields.setdefault(key, set()).add(field)
    assert fields["hospital-b/s4/report"] == {"txt", "labels.json", "meta.json"}
    assert fields["hospital-b/s5/im4"] == {"img.16.png", "img.8.png", "img.4.png", "labels.json", "meta.json"}
    assert "txt" in fields["hospital-b/s1/im1"] and "img.16.png" in fields["hospital-b/s1/im1"]


def test_paths_outside_the_manifest_folder_are_rejected_unless_allowed(tmp_path):
    import os

    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    (site / "img").mkdir(parents=True)
    elsewhere.mkdir()
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(elsewhere / "far.png")
    (elsewhere / "secret.txt").write_text("FINDINGS: not yours.")
    os.symlink(elsewhere / "far.png", site / "img" / "link.png")       # a link out of the folder
    escape = os.path.relpath(elsewhere / "secret.txt", site)           # ../elsewhere/secret.txt
    rows = [["p1", "", "", escape, "train"],
            ["p2", "", "", "/etc/hostname", "train"],
            ["p3", str(elsewhere / "far.png"), "x", "", "train"],
            ["p4", "img/link.png", "y", "", "train"]]
    manifest = write_manifest(site, rows, header=["patient_id", "image", "report", "report_file", "split"])
    items, rejects = logged(CSVManifestSource(manifest), tmp_path / "r1.jsonl")
    assert items == [] and dict(rejects.counts) == {"path_outside_roots": 4}
    lines = [json.loads(x) for x in (tmp_path / "r1.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all("--csv-allow-root" in r["detail"] for r in lines)
    assert f"resolves to {elsewhere / 'secret.txt'}" in lines[0]["detail"]
    # an explicit root admits exactly that folder, and is recorded in index.json
    items, rejects = listing(CSVManifestSource(manifest, allow_roots=[elsewhere]))
    assert sorted(it.meta["patient_id"] for it in items) == ["p1", "p3", "p4"]
    assert dict(rejects.counts) == {"path_outside_roots": 1}                     # /etc/hostname
    from mixvlp_ds.shard.__main__ import main as shard_main

    out = tmp_path / "out"
    shard_main(["--source", "csv", "--csv-manifest", str(manifest), "--csv-allow-root", str(elsewhere),
                "--out", str(out), "--image-size", "16", "--no-progress"])
    index = json.loads((out / "index.json").read_text())
    assert index["args"]["source_args"]["csv_allow_root"] == [str(elsewhere)]


def test_a_row_with_extra_fields_is_rejected_as_malformed(tmp_path):
    manifest = write_manifest(tmp_path, [["p1", "", "clear lungs", "train"],
                                         ["p2", "", "clear lungs", "train", "surplus"]],
                              header=["patient_id", "image", "report", "split"])
    items, rejects = logged(CSVManifestSource(manifest), tmp_path / "r.jsonl")
    assert [it.meta["patient_id"] for it in items] == ["p1"]
    assert dict(rejects.counts) == {"malformed_row": 1}
    assert "5 fields, the header has 4" in json.loads((tmp_path / "r.jsonl").read_text())["detail"]
