"""NIH ChestX-ray14 source: the real metadata + images (docs/test_data.md), and generated bad layouts."""

import argparse
import csv
import gzip
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.labels import CXR14
from mixvlp_ds.shard.source import InputLayoutError, RejectLog
from mixvlp_ds.shard.sources import nih
from mixvlp_ds.shard.sources._files import SplitRule
from mixvlp_ds.shard.sources.nih import NIHSource, expand_header

V2020_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")


def listing(source):
    rejects = RejectLog()
    return list(source.items(rejects)), rejects


@pytest.fixture(scope="module")
def real(shared_data):
    return listing(NIHSource(shared_data / "nih_cxr14"))


def test_expand_two_column_bracketed_headers():
    assert expand_header(V2020_HEADER.split(",")) == [
        "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
        "View Position", "OriginalImage[Width]", "OriginalImage[Height]", "OriginalImagePixelSpacing[x]",
        "OriginalImagePixelSpacing[y]"]
    # The 2017 file ends with an empty column.
    assert expand_header(["A", "Bbox [x", "y", "w", "h]", ""]) == ["A", "Bbox [x]", "Bbox [y]", "Bbox [w]",
                                                                   "Bbox [h]", ""]


def test_real_metadata_lists_the_621_images_on_disk(real, shared_data):
    items, rejects = real
    assert len(items) == 621
    assert rejects.total == 0
    assert rejects.notes["image absent from disk"] == 112_120 - 621
    # images_original/ holds the 1024^2 PNG originals of 20 of them: the exact file name wins.
    assert rejects.notes["image found in several folders (first kept)"] == 20
    assert sum("/images_original/" in it.image_path for it in items) == 20
    assert len({it.key for it in items}) == 621
    with open(shared_data / "nih_cxr14" / "images_512_index.csv") as fh:
        index = {r["image_index"]: r for r in csv.DictReader(fh)}
    for it in items:
        row = index[it.meta["study_id"] + ".png"]
        findings = set(row["finding_labels"].split("|")) - {"No Finding"}
        assert it.labels == {name: int(name in findings) for name in CXR14}
        assert it.meta["view"] == row["view"]
        assert it.meta["patient_id"] == f"{int(row['patient_id']):08d}"
        assert it.text is None and it.meta["institution"] == "nih"


def test_real_split_is_patient_level_and_deterministic(real, shared_data):
    items, _ = real
    by_patient = {}
    for it in items:
        by_patient.setdefault(it.meta["patient_id"], set()).add(it.meta["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    splits = [it.meta["split"] for it in items]
    assert {"train", "val", "test"} <= set(splits)
    again, _ = listing(NIHSource(shared_data / "nih_cxr14"))
    assert [(i.key, i.meta, i.labels, i.image_path) for i in again] == \
        [(i.key, i.meta, i.labels, i.image_path) for i in items]


def test_chexnet_split_lists(shared_data):
    nih_dir = shared_data / "nih_cxr14"
    items, _ = listing(NIHSource(nih_dir, split=SplitRule(nih_dir / "chexnet_split")))
    assert len(items) == 621 and {it.meta["split"] for it in items} == {"test"}  # all in CheXNet's test split


def test_build_from_command_line_arguments(shared_data):
    parser = argparse.ArgumentParser()
    nih.add_arguments(parser)
    args = parser.parse_args(["--nih-dir", str(shared_data / "nih_cxr14"), "--nih-images", "images_original"])
    args.institution, args.seed = "hospital-a", 0
    source = nih.build(args)
    assert source.name == "nih" and source.label_space == "cxr14"
    items, _ = listing(source)
    assert len(items) == 20 and all(it.key.startswith("hospital-a/") for it in items)
    args.nih_dir = None
    with pytest.raises(InputLayoutError, match="--nih-dir"):
        nih.build(args)


# ---------------------------------------------------------------- a generated layout with bad input

def write_png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


def make_layout(root, rows, header="2017", gz=False, official=None):
    """rows: (image, findings, patient, view). 2017 header: bracketed names + a trailing empty column."""
    if header == "2017":
        head = V2020_HEADER + ","
    else:
        head = header
    lines = [head] + [f"{img},{f},0,{p},50,M,{v},2500,2048,0.143,0.143" + ("," if header == "2017" else "")
                      for img, f, p, v in rows]
    text = "\n".join(lines) + "\n"
    name = "Data_Entry_2017.csv"
    if gz:
        (root / (name + ".gz")).write_bytes(gzip.compress(text.encode()))
    else:
        (root / name).write_text(text)
    for img, *_ in rows:
        write_png(root / "images_001" / "images" / img)
    if official:
        (root / "train_val_list.txt").write_text("\n".join(official["train_val"]) + "\n")
        (root / "test_list.txt").write_text("\n".join(official["test"]) + "\n")


def test_generated_layout_bad_rows_and_official_split(tmp_path):
    rows = [(f"{p:08d}_000.png", "No Finding", p, "PA") for p in range(1, 41)]
    rows.append(("00000001_000.png", "Mass", 1, "PA"))            # duplicate image index
    rows.append(("00000050_000.png", "Dragons|Mass", 50, "AP"))   # unknown finding
    rows.append(("00000051_000.png", "Mass|Nodule", 51, "AP"))
    make_layout(tmp_path, rows, gz=True, official={
        "train_val": [f"{p:08d}_000.png" for p in range(1, 31)],
        "test": [f"{p:08d}_000.png" for p in range(31, 41)]})
    (tmp_path / "images_001" / "images" / "00000040_000.png").unlink()   # absent from disk
    with gzip.open(tmp_path / "Data_Entry_2017.csv.gz", "at") as fh:
        fh.write("00000060_000.png,Mass\n")                         # truncated row
    items, rejects = listing(NIHSource(tmp_path))
    assert dict(rejects.counts) == {"duplicate_key": 1, "unknown_finding_label": 1, "malformed_row": 1,
                                    "not_in_split_lists": 1}      # 00000051 is in neither list
    assert rejects.notes["image absent from disk"] == 1
    assert [it.meta["study_id"] for it in items] == [f"{p:08d}_000" for p in range(1, 40)]
    assert items[0].labels == dict.fromkeys(CXR14, 0)              # "No Finding": all zero, Mass row dropped
    assert {it.meta["split"] for it in items[30:]} == {"test"}
    assert {it.meta["split"] for it in items[:30]} == {"train", "val"}  # val drawn from train_val by patient


def test_bad_layouts_say_what_was_expected(tmp_path):
    with pytest.raises(InputLayoutError, match="does not exist"):
        NIHSource(tmp_path / "nope")
    with pytest.raises(InputLayoutError, match="Data_Entry_2017"):
        NIHSource(tmp_path)
    make_layout(tmp_path, [("00000001_000.png", "Mass", 1, "PA")], header="Image Index,Labels,Patient ID")
    with pytest.raises(InputLayoutError, match=r"missing column\(s\) \['Finding Labels', 'View Position'\]"):
        listing(NIHSource(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "Data_Entry_2017.csv").write_text(V2020_HEADER + "\n")
    with pytest.raises(InputLayoutError, match="no image folder matching 'images\\*'"):
        NIHSource(empty)
    (empty / "Data_Entry_2017.csv").write_bytes(b"")
    (empty / "images").mkdir()
    with pytest.raises(InputLayoutError, match="empty file"):
        listing(NIHSource(empty))


def test_end_to_end_shards_from_real_images(shared_data, tmp_path):
    """The 20 original 1024^2 PNGs (6 RGBA) -> shards -> read back with tarfile."""
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset

    source = NIHSource(shared_data / "nih_cxr14", image_glob="images_original")
    summary = write_dataset(source, tmp_path / "out", ShardOptions(image_size=64, progress=False))
    assert summary["total_samples"] == 20 and summary["rejects_total"] == 0
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["source"] == "nih" and index["label_space"] == "cxr14"
    samples = {}
    for split, entry in index["splits"].items():
        for shard in entry["shards"]:
            with tarfile.open(tmp_path / "out" / shard["file"]) as tar:
                for m in tar:
                    key, field = m.name.split(".", 1)
                    samples.setdefault(key, {})[field] = tar.extractfile(m).read()
                    samples[key]["split"] = split
    assert len(samples) == 20
    expected = {it.key: it for it in listing(source)[0]}
    for key, s in samples.items():
        assert "txt" not in s
        meta = json.loads(s["meta.json"])
        assert meta["split"] == s["split"] == expected[key].meta["split"]
        assert (meta["orig_width"], meta["orig_height"]) == (1024, 1024)
        assert json.loads(s["labels.json"])["values"] == expected[key].labels
        img = Image.open(io.BytesIO(s["img.64.png"]))
        assert img.mode == "L" and img.size == (64, 64)


def test_no_image_on_disk_writes_nothing_and_says_why(tmp_path):
    from mixvlp_ds.shard.pipeline import NothingWrittenError, write_dataset

    make_layout(tmp_path, [("00000001_000.png", "Mass", 1, "PA"), ("00000002_000.png", "Mass", 2, "PA")])
    for p in (tmp_path / "images_001" / "images").iterdir():
        p.unlink()
    with pytest.raises(NothingWrittenError, match="image absent from disk: 2") as err:
        write_dataset(NIHSource(tmp_path), tmp_path / "out")
    assert "Image Index" in str(err.value)
    assert not (tmp_path / "out" / "index.json").exists()
