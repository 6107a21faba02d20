"""MIMIC-CXR-JPG source on a generated fixture in the exact PhysioNet layout, with the real example
report published by MIT-LCP (no MIMIC data is available or used here)."""

import argparse
import gzip
import hashlib
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.source import InputLayoutError, RejectLog
from mixvlp_ds.shard.sources import mimic
from mixvlp_ds.shard.sources.mimic import MIMICSource
from mixvlp_ds.text.sections import extract_report

METADATA_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                   "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                   "PatientOrientationCodeSequence_CodeMeaning")
SPLIT_HEADER = "dicom_id,study_id,subject_id,split"
LABEL_HEADER = "subject_id,study_id," + ",".join(CHEXPERT14)


def dicom_id(n: int) -> str:
    """Five dash-separated groups of 8 hex characters, like the real ids."""
    h = hashlib.sha1(str(n).encode()).hexdigest()
    return "-".join(h[i: i + 8] for i in range(0, 40, 8))


def write_gz_csv(path, header, rows):
    lines = [header] + [",".join(map(str, r)) for r in rows]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))


# (subject, study, [(dicom n, view)], report text or None (no file) or bytes, split, label row or None)
def studies(example: str):
    return [
        ("10000032", "50414267", [(1, "PA"), (2, "LATERAL")], example, "train",
         ["", "", "", "", "", "", "", "", "", "1.0", "", "", "0.0", ""]),
        ("10000032", "53189527", [(3, "AP"), (4, "AP")], "FINDINGS: Lungs clear.\nIMPRESSION: ___ normal.",
         "validate", ["-1.0", "1.0", "", "", "", "", "", "", "", "", "", "", "", "1.0"]),
        ("11000011", "51000001", [(5, "PA")], "", "test", None),                       # empty report
        ("11000011", "51000002", [(6, "PA")], "IMPRESSION: Small effusion \u2013 stable.".encode("cp1252"),
         "train", ["", "", "", "", "", "", "", "", "", "1.0", "", "", "", ""]),
        ("12000012", "52000001", [(7, "PA")], None, "train",                           # no report file
         ["", "", "", "", "", "", "", "", "1.0", "", "", "", "", ""]),
        ("12000012", "52000002", [(8, "LL"), (9, "PA")], "Heart normal.\n\nNo acute process.", "test",
         ["", "", "", "", "", "", "", "", "1.0", "", "", "", "", ""]),
        ("13000013", "53000001", [(10, "PA")], "FINDINGS: x.", "train",
         ["1.0", "yes", "", "", "", "", "", "", "", "", "", "", "", ""]),               # bad label cell
    ]


@pytest.fixture
def layout(tmp_path, shared_data):
    example = (shared_data / "mimic_cxr_format" / "example_report_from_MIT-LCP_docs.txt").read_text()
    root = tmp_path / "mimic-cxr-jpg"
    meta, split, labels = [], [], []
    for subject, study, images, report, sp, label_row in studies(example):
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}"
        (folder / f"s{study}").mkdir(parents=True)
        for n, view in images:
            jpg = folder / f"s{study}" / f"{dicom_id(n)}.jpg"
            Image.fromarray(np.full((40, 32), 10 * n, np.uint8)).save(jpg)
            meta.append([dicom_id(n), subject, study, "CHEST (PA AND LAT)", view, 40, 32, 21800506,
                         213014.531, "CHEST (PA AND LAT)", "postero-anterior", "Erect"])
            split.append([dicom_id(n), study, subject, sp])
        if report is not None:
            data = report if isinstance(report, bytes) else report.encode()
            (folder / f"s{study}.txt").write_bytes(data)
        if label_row is not None:
            labels.append([subject, study] + label_row)
    # Bad rows: a dicom listed twice, one without a split row, one whose image is not on disk.
    meta.append(meta[0])
    meta.append([dicom_id(11), "13000013", "53000001", "", "PA", 40, 32, "", "", "", "", ""])
    meta.append([dicom_id(12), "13000013", "53000001", "", "PA", 40, 32, "", "", "", "", ""])
    split.append([dicom_id(12), "53000001", "13000013", "train"])
    write_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", METADATA_HEADER, meta)
    write_gz_csv(root / "mimic-cxr-2.0.0-split.csv.gz", SPLIT_HEADER, split)
    write_gz_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", LABEL_HEADER, labels)
    return root, example


def listing(source):
    rejects = RejectLog()
    return list(source.items(rejects)), rejects


def test_frontal_images_reports_labels_splits(layout):
    root, example = layout
    items, rejects = listing(MIMICSource(root))
    by_dicom = {it.key.rsplit("/", 1)[1]: it for it in items}
    assert list(by_dicom) == [dicom_id(n) for n in (1, 3, 4, 5, 6, 7, 9, 10)]   # frontal, on disk, in order
    first = by_dicom[dicom_id(1)]
    assert first.key == f"mimic/s50414267/{dicom_id(1)}"
    assert first.text == extract_report(example)
    assert first.text.endswith("thoracic spine. Large left pleural effusion")
    assert first.meta == {"institution": "mimic", "patient_id": "10000032", "study_id": "50414267",
                          "view": "PA", "split": "train"}
    assert first.labels["Pleural Effusion"] == 1 and first.labels["Pneumothorax"] == 0
    assert first.labels["Atelectasis"] is None                                  # blank: not mentioned
    assert first.image_path.endswith(f"files/p10/p10000032/s50414267/{dicom_id(1)}.jpg")
    ap = by_dicom[dicom_id(3)]
    assert ap.meta["split"] == "val" and ap.meta["view"] == "AP"               # validate -> val
    assert ap.labels["Atelectasis"] == -1 and ap.labels["Support Devices"] == 1
    assert ap.text == "Lungs clear. XXXX normal."
    assert by_dicom[dicom_id(4)].text == ap.text                                # same study, same report
    assert by_dicom[dicom_id(5)].text is None                                   # empty report: image kept
    assert by_dicom[dicom_id(5)].labels == dict.fromkeys(CHEXPERT14)            # no label row: all null
    assert by_dicom[dicom_id(6)].text == "Small effusion \u2013 stable."         # cp1252 en dash decoded
    assert by_dicom[dicom_id(7)].text is None                                   # no report file
    assert by_dicom[dicom_id(9)].text == "No acute process."                    # last-paragraph fallback
    assert by_dicom[dicom_id(10)].labels == dict.fromkeys(CHEXPERT14)           # its label row was bad

    assert dict(rejects.counts) == {"empty_report": 1, "duplicate_key": 1, "missing_from_split_file": 1,
                                    "bad_label_value": 1}
    assert rejects.notes == {"view not frontal (skipped)": 2, "image absent from disk": 1,
                             "report decoded as cp1252": 1,
                             "report absent from disk (image written without text)": 1,
                             "image without label row (labels null)": 2}


def test_views_labels_options_and_build(layout):
    root, _ = layout
    parser = argparse.ArgumentParser()
    mimic.add_arguments(parser)
    args = parser.parse_args(["--mimic-dir", str(root), "--mimic-views", "LATERAL,LL",
                              "--mimic-labels", "none"])
    args.institution, args.seed = None, 0
    items, _ = listing(mimic.build(args))
    assert [it.meta["view"] for it in items] == ["LATERAL", "LL"]
    assert all(v is None for it in items for v in it.labels.values())
    args = parser.parse_args(["--mimic-dir", str(root), "--mimic-labels", "negbio"])
    args.institution, args.seed = None, 0
    with pytest.raises(InputLayoutError, match="mimic-cxr-2.0.0-negbio"):
        mimic.build(args)
    args.mimic_dir = None
    with pytest.raises(InputLayoutError, match="--mimic-dir"):
        mimic.build(args)


def test_unrecognised_layouts(layout, tmp_path):
    root, _ = layout
    with pytest.raises(InputLayoutError, match="no files/ folder"):
        MIMICSource(tmp_path)
    (root / "mimic-cxr-2.0.0-split.csv.gz").rename(root / "split.csv.gz")
    with pytest.raises(InputLayoutError, match=r"missing \['mimic-cxr-2.0.0-split.csv\[.gz\]'\]"):
        MIMICSource(root)
    (root / "split.csv.gz").rename(root / "mimic-cxr-2.0.0-split.csv.gz")
    write_gz_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", "dicom_id,subject_id,study_id,View", [])
    with pytest.raises(InputLayoutError, match=r"missing column\(s\) \['ViewPosition'\]"):
        listing(MIMICSource(root))
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputLayoutError, match="metadata.csv.gz"):
        listing(MIMICSource(root))


def test_end_to_end_shards(layout, tmp_path):
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset

    root, example = layout
    out = tmp_path / "out"
    summary = write_dataset(MIMICSource(root), out, ShardOptions(image_size=32, progress=False))
    assert summary["total_samples"] == 8
    assert summary["rejects"] == {"empty_report": 1, "duplicate_key": 1, "missing_from_split_file": 1,
                                  "bad_label_value": 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["reason"] for r in rejects} == set(summary["rejects"])
    assert any(r["file"].endswith("s51000001.txt") for r in rejects if r["reason"] == "empty_report")
    texts = {}
    for split in ("train", "val", "test"):
        for shard in json.loads((out / "index.json").read_text())["splits"].get(split, {}).get("shards", []):
            with tarfile.open(out / shard["file"]) as tar:
                for m in tar:
                    key, field = m.name.split(".", 1)
                    if field == "txt":
                        texts[key] = tar.extractfile(m).read().decode()
                    if field == "meta.json":
                        assert json.loads(tar.extractfile(m).read())["split"] == split
    assert texts[f"mimic/s50414267/{dicom_id(1)}"] == extract_report(example)
    assert len(texts) == 6                                                     # 2 images written without text


def test_rerun_writes_identical_shards(layout, tmp_path):
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset

    root, _ = layout
    outs = [tmp_path / "a", tmp_path / "b"]
    for out, workers in zip(outs, (1, 2), strict=True):
        write_dataset(MIMICSource(root), out, ShardOptions(image_size=32, workers=workers, progress=False))
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == sorted(p.name for p in outs[1].iterdir()) and any(f.endswith(".tar") for f in files)
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
