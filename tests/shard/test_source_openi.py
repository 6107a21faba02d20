"""OpenI source on the real NLMCXR_reports.tgz, gold label CSV, test ids and view tables; images are
generated (the IU images are not available here), named like the XML's parentImage ids."""

import argparse
import csv
import json
import tarfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.labels import CXR14
from mixvlp_ds.shard.source import InputLayoutError, RejectLog
from mixvlp_ds.shard.sources import openi
from mixvlp_ds.shard.sources._files import SplitRule
from mixvlp_ds.shard.sources.openi import OpenISource, mesh_labels
from mixvlp_ds.text.sections import extract_report

NUM_REPORTS = 3955                   # the README's count of ecgen-radiology/*.xml


def listing(source):
    rejects = RejectLog()
    return list(source.items(rejects)), rejects


@pytest.fixture(scope="module")
def openi_dir(shared_data):
    return shared_data / "openi_iu"


@pytest.fixture(scope="module")
def gold_listing(openi_dir):
    return listing(OpenISource(openi_dir / "NLMCXR_reports.tgz", labels=openi_dir / "openi_gld_std14.csv",
                               split=SplitRule(openi_dir / "openi-testset.txt")))


@pytest.fixture(scope="module")
def gold_rows(openi_dir):
    with open(openi_dir / "openi_gld_std14.csv") as fh:
        return {r["filename"]: r for r in csv.DictReader(fh)}


def test_real_tgz_text_records_with_gold_labels(gold_listing, gold_rows, openi_dir):
    items, rejects = gold_listing
    # Without images every record is text-only; reports without FINDINGS and IMPRESSION are rejected.
    assert len(items) + rejects.counts["empty_report"] == NUM_REPORTS
    assert set(rejects.counts) == {"empty_report"}
    assert len(items) >= 3921                                 # IMPRESSION is non-empty in 3,921 reports
    assert all(it.text and it.image_path is None and it.meta["source_file"] for it in items)
    numbers = [int(it.meta["study_id"][3:]) for it in items]
    assert numbers == sorted(numbers)                         # ordered by report number
    labelled = [it for it in items if it.meta["study_id"] in gold_rows]
    assert rejects.notes["report not in label CSV (labels null)"] == len(items) - len(labelled)
    for it in labelled:
        assert it.labels == {n: int(gold_rows[it.meta["study_id"]][n]) for n in CXR14}
    # Positive counts over all gold rows, as the README gives them (every gold row has a report).
    assert sum(it.labels["Atelectasis"] for it in labelled) <= 315
    test_ids = set((openi_dir / "openi-testset.txt").read_text().split())
    assert {it.meta["split"] for it in items} == {"train", "test"}
    assert all((it.meta["split"] == "test") == (it.meta["study_id"] in test_ids) for it in items)
    assert len({it.key for it in items}) == len(items)


def test_real_report_text_is_findings_then_impression(gold_listing, openi_dir):
    items, _ = gold_listing
    by_id = {it.meta["study_id"]: it for it in items}
    with tarfile.open(openi_dir / "NLMCXR_reports.tgz") as tf:
        root = ET.fromstring(tf.extractfile("ecgen-radiology/1.xml").read())
    s = {a.get("Label"): a.text for a in root.iter("AbstractText")}
    assert by_id["CXR1"].text == extract_report(f"FINDINGS: {s['FINDINGS']}\nIMPRESSION: {s['IMPRESSION']}")
    assert by_id["CXR1"].text.startswith("The cardiac silhouette and mediastinum size are within normal")
    assert by_id["CXR1"].text.endswith("Normal chest x-XXXX.")
    assert "Positive TB test" not in by_id["CXR1"].text      # INDICATION is not part of the text


def test_mesh_mapping_agrees_with_the_gold_labels(gold_listing):
    """The documented MeSH mapping against NegBio's openi_gld_std14.csv, label by label."""
    gold = {it.meta["study_id"]: it.labels for it in gold_listing[0] if it.labels["Atelectasis"] is not None}
    mesh, rejects = listing(OpenISource(gold_listing[0][0].meta["source_file"].split(":")[0]))
    mesh = {it.meta["study_id"]: it.labels for it in mesh}
    disagree = {n: sum(mesh[u][n] != g[n] for u, g in gold.items() if mesh[u][n] is not None) for n in CXR14}
    exact = [n for n, d in disagree.items() if d == 0]
    # The gold file also counts pericardial effusion as Effusion, any "Thickening" as pleural, and not
    # hydropneumothorax, bullous emphysema or hiatal hernia; the mapping keeps the clinical reading.
    assert set(CXR14) - set(exact) == {"Effusion", "Pneumothorax", "Emphysema", "Pleural_Thickening",
                                       "Hernia"}, disagree
    assert all(d <= 10 for n, d in disagree.items() if n != "Hernia"), disagree   # of ~3,850 reports
    positives = sum(mesh[u]["Cardiomegaly"] or 0 for u in gold)
    assert positives == 345                                   # README: Cardiomegaly 345 in the gold file


def test_mesh_labels_rules():
    assert mesh_labels(["normal"]) == dict.fromkeys(CXR14, 0)
    assert mesh_labels(["No Indexing"]) == dict.fromkeys(CXR14)
    assert mesh_labels([]) == dict.fromkeys(CXR14)
    got = mesh_labels(["Pulmonary Atelectasis/base/left", "Thickening/pleura/right", "Thickening/bronchi",
                       "Pericardial Effusion", "  hernia,  hiatal "])
    assert {n for n, v in got.items() if v} == {"Atelectasis", "Pleural_Thickening", "Hernia"}


# ---------------------------------------------------------------- a small folder of real XML + images

def make_folder(tmp_path, shared_data, first=30):
    """Real XML reports 1..first into a folder, plus bad files; PNGs for most of their images."""
    xml_dir, img_dir = tmp_path / "ecgen-radiology", tmp_path / "png"
    xml_dir.mkdir()
    img_dir.mkdir()
    with tarfile.open(shared_data / "openi_iu" / "NLMCXR_reports.tgz") as tf:
        for n in range(1, first + 1):
            try:
                data = tf.extractfile(f"ecgen-radiology/{n}.xml").read()
            except KeyError:
                continue
            (xml_dir / f"{n}.xml").write_bytes(data)
            for k, p in enumerate(ET.fromstring(data).iter("parentImage")):
                pid = p.get("id")
                if n == 3:
                    continue                                       # report 3: images absent from disk
                name = f"{pid[3:]}.dcm.png" if n % 2 else f"{pid}.png"   # Kaggle and NLMCXR_png names
                Image.fromarray(np.full((24, 20), 40 * k + n, np.uint8)).save(img_dir / name)
    (xml_dir / "1000000.xml").write_text("<eCitation><uId id='CXR1000000'/><Abstract>")        # truncated
    (xml_dir / "1000001.xml").write_bytes((xml_dir / "2.xml").read_bytes())                      # duplicate
    (xml_dir / "1000002.xml").write_text("<eCitation><AbstractText Label='FINDINGS'>x</AbstractText>"
                                         "</eCitation>")                                          # no uId
    return tmp_path, xml_dir, img_dir


def test_folder_images_views_and_bad_files(tmp_path, shared_data, openi_dir):
    root, xml_dir, img_dir = make_folder(tmp_path, shared_data)
    parser = argparse.ArgumentParser()
    openi.add_arguments(parser)
    args = parser.parse_args(["--openi-reports", str(root), "--openi-images", str(img_dir),
                              "--openi-views", str(openi_dir / "nlmcxr_tsne_pa.csv.gz")])
    args.institution, args.seed = "iu", 0
    items, rejects = listing(openi.build(args))
    assert dict(rejects.counts) == {"malformed_xml": 1, "duplicate_key": 1, "no_report_id": 1}
    by_id = {it.meta["study_id"]: it for it in items}
    # CXR1: t-SNE calls CXR1_1_IM-0001-3001 lateral; the other image (view not listed) is taken.
    assert by_id["CXR1"].image_path.endswith("1_IM-0001-4001.dcm.png")
    assert by_id["CXR1"].key == "iu/CXR1/CXR1_1_IM-0001-4001" and by_id["CXR1"].meta["view"] == ""
    assert by_id["CXR2"].image_path.endswith("CXR2_IM-0652-1001.png") and by_id["CXR2"].meta["view"] == "PA"
    assert by_id["CXR3"].image_path is None and by_id["CXR3"].text                 # image absent: text only
    assert rejects.notes["image absent from disk (text only)"] == 1
    assert all(it.image_path for sid, it in by_id.items() if sid != "CXR3")
    # Without a view table the first parentImage is used.
    items, _ = listing(OpenISource(xml_dir, images=img_dir))
    assert {it.meta["study_id"]: it for it in items}["CXR1"].image_path.endswith("1_IM-0001-3001.dcm.png")


def test_bad_inputs_name_what_was_expected(tmp_path, openi_dir):
    with pytest.raises(InputLayoutError, match="NLMCXR_reports.tgz or a folder"):
        OpenISource(tmp_path)
    with pytest.raises(InputLayoutError, match="is not a folder"):
        OpenISource(openi_dir / "NLMCXR_reports.tgz", images=tmp_path / "missing")
    bad = tmp_path / "labels.csv"
    bad.write_text("filename,Atelectasis,Cardiomegaly,Dragons\nCXR1,0,1,0\n")
    with pytest.raises(InputLayoutError, match=r"unknown column\(s\) \['Dragons'\]"):
        listing(OpenISource(openi_dir / "NLMCXR_reports.tgz", labels=bad))
    with pytest.raises(InputLayoutError, match="expected a view table"):
        listing(OpenISource(openi_dir / "NLMCXR_reports.tgz", views=openi_dir / "openi_gld_std14.csv"))
    args = argparse.Namespace(openi_reports=None)
    with pytest.raises(InputLayoutError, match="--openi-reports"):
        openi.build(args)


def test_end_to_end_shards(tmp_path, shared_data, openi_dir):
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset

    root, xml_dir, img_dir = make_folder(tmp_path, shared_data, first=20)
    source = OpenISource(xml_dir, images=img_dir, labels=openi_dir / "openi_gld_std14.csv")
    expected = {it.key: it for it in listing(source)[0]}
    out = tmp_path / "out"
    summary = write_dataset(source, out, ShardOptions(image_size=32, progress=False))
    assert summary["total_samples"] == len(expected)
    assert summary["rejects"] == {"malformed_xml": 1, "duplicate_key": 1, "no_report_id": 1}
    index = json.loads((out / "index.json").read_text())
    seen = {}
    for entry in index["splits"].values():
        for shard in entry["shards"]:
            with tarfile.open(out / shard["file"]) as tar:
                for m in tar:
                    key, field = m.name.split(".", 1)
                    seen.setdefault(key, {})[field] = tar.extractfile(m).read()
    assert set(seen) == set(expected)
    kinds = {("img.32.png" in s, "txt" in s) for s in seen.values()}
    assert kinds == {(True, True), (False, True), (True, False)}          # paired, text-only, image-only
    for key, s in seen.items():
        it = expected[key]
        assert (s["txt"].decode() if "txt" in s else None) == it.text   # image-only: empty report
        assert ("img.32.png" in s) == (it.image_path is not None)
        assert json.loads(s["labels.json"]) == {"space": "cxr14", "values": it.labels}
        assert json.loads(s["meta.json"])["patient_id"] == it.meta["study_id"]
