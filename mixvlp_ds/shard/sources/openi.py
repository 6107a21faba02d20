"""OpenI / Indiana University chest X-rays: ecgen-radiology XML reports + an optional PNG folder.

Inputs:

    --openi-reports   the NLMCXR_reports.tgz as published (read in place with tarfile), or a folder
                      of <n>.xml files (or a folder holding ecgen-radiology/)
    --openi-images    optional PNG folder, files named by the XML's parentImage id
                      (CXR1_1_IM-0001-3001.png, the NLMCXR_png release) or in the Kaggle style
                      (1_IM-0001-3001.dcm.png); without it every record is text-only
    --openi-views     optional CSV giving each image's view: nlmcxr_tsne_pa.csv(.gz)
                      (imageid,tsne-view), nlmcxr_dicom_metadata.csv(.gz) (imageid,View Position)
                      or Kaggle indiana_projections.csv (uid,filename,projection)
    --openi-labels    openi_gld_std14.csv (filename,<14 ChestX-ray14 findings>,normal), or "mesh"
                      (default): labels from the manual MeSH <major> terms, mapping in MESH_TO_CXR14
    --openi-test-ids  optional list of report ids (CXRn) that form the test split; the rest is train

One record per report: FINDINGS + IMPRESSION as text (`extract_report`), and one frontal image
found on disk: with --openi-views, the first parentImage whose view is PA/AP, else the first one
whose view the table does not give (never a known lateral); without it, the first parentImage.
OpenI has no patient ids: the report id stands in for the patient.
"""

from __future__ import annotations

import argparse
import csv
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from mixvlp_ds.labels import CXR14
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import InputLayoutError, RejectLog, SourceItem
from mixvlp_ds.shard.sources._files import HASH_SPLIT, SplitRule, csv_dicts, csv_rows, parse_label
from mixvlp_ds.text.sections import extract_report

HELP = ("OpenI/IU ecgen-radiology XML reports (NLMCXR_reports.tgz or a folder of XML) + optional PNG folder: "
        "FINDINGS+IMPRESSION, one frontal image per report, cxr14 labels from a gold CSV or MeSH terms.")

FRONTAL = ("PA", "AP", "FRONTAL")  # DICOM/t-SNE view positions; Kaggle "Frontal"

# MeSH <major> heading (the part before the first '/', case-insensitive) -> ChestX-ray14 finding.
# Pleural thickening is "Thickening/pleura/...": the heading alone is ambiguous, so it also needs
# the "pleura" qualifier. Headings not listed map to nothing (the finding is 0). Documented in
# docs/sources.md; measured against openi_gld_std14.csv in tests/shard/test_source_openi.py.
MESH_TO_CXR14: dict[str, str] = {
    "pulmonary atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Effusion",
    "infiltrate": "Infiltration",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "hydropneumothorax": "Pneumothorax",
    "hemopneumothorax": "Pneumothorax",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "emphysema": "Emphysema",
    "pulmonary emphysema": "Emphysema",
    "bullous emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "fibrosis": "Fibrosis",
    "thickening/pleura": "Pleural_Thickening",
    "hernia, hiatal": "Hernia",
    "hernia, diaphragmatic": "Hernia",
}
NOT_INDEXED = "no indexing"  # the indexer's "No Indexing": labels unknown, not negative


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("openi source (--source openi)")
    g.add_argument("--openi-reports", help="NLMCXR_reports.tgz, or a folder of ecgen-radiology XML files")
    g.add_argument("--openi-images", help="PNG folder named by parentImage id (optional: text-only without)")
    g.add_argument("--openi-views", help="view CSV: nlmcxr_tsne_pa.csv.gz, nlmcxr_dicom_metadata.csv.gz "
                                         "or indiana_projections.csv")
    g.add_argument("--openi-labels", default="mesh",
                   help="label CSV (openi_gld_std14.csv layout) or 'mesh' for the MeSH mapping (default)")
    g.add_argument("--openi-test-ids", help="file of report ids (CXRn) forming the test split; rest train")
    g.add_argument("--openi-val-fraction", type=float, default=0.1, help="id-hash split: val share")
    g.add_argument("--openi-test-fraction", type=float, default=0.2, help="id-hash split: test share")


def build(args: argparse.Namespace) -> OpenISource:
    if not args.openi_reports:
        raise InputLayoutError("--source openi needs --openi-reports (NLMCXR_reports.tgz or an XML folder)")
    split = SplitRule(args.openi_test_ids, args.openi_val_fraction, args.openi_test_fraction)
    return OpenISource(args.openi_reports, images=args.openi_images, views=args.openi_views,
                       labels=args.openi_labels, split=split, institution=args.institution)


def image_key(image_id: str) -> str:
    """Image id as the view tables spell it: the DICOM metadata drops the '_1' of some XML ids
    ('CXR1_1_IM-0001-3001' -> 'CXR1_IM-0001-3001'); applied to both sides of every lookup."""
    return re.sub(r"^(CXR\d+)_\d+_(IM-)", r"\1_\2", image_id.strip())


def mesh_labels(terms: list[str]) -> dict[str, int | None]:
    """MeSH <major> terms -> cxr14 values: mapped findings 1, the rest 0; all null if not indexed."""
    norm = [" ".join(t.split()).lower() for t in terms if t and t.strip()]
    if not norm or NOT_INDEXED in norm:
        return dict.fromkeys(CXR14)
    found = set()
    for term in norm:
        parts = term.split("/")
        for key in (parts[0], "/".join(parts[:2])):
            if key in MESH_TO_CXR14:
                found.add(MESH_TO_CXR14[key])
    return {name: int(name in found) for name in CXR14}


def parse_report_xml(data: bytes) -> dict:
    """One ecgen-radiology XML -> {uid, sections: {LABEL: text}, mesh: [...], images: [...]}."""
    root = ET.fromstring(data)
    uid = root.find("uId")
    return {
        "uid": uid.get("id", "").strip() if uid is not None else "",
        "sections": {(a.get("Label") or "").upper(): (a.text or "") for a in root.iter("AbstractText")},
        "mesh": [m.text or "" for m in root.iter("major")],
        "images": [p.get("id", "") for p in root.iter("parentImage") if p.get("id")],
    }


class OpenISource:
    name = "openi"
    label_space = "cxr14"

    def __init__(self, reports: str | Path, images: str | Path | None = None, views: str | Path | None = None,
                 labels: str | Path = "mesh", split: SplitRule = HASH_SPLIT, institution: str | None = None):
        self.reports = Path(reports)
        if self.reports.is_dir() and (self.reports / "ecgen-radiology").is_dir():
            self.reports = self.reports / "ecgen-radiology"
        is_tar = self.reports.is_file() and tarfile.is_tarfile(self.reports)
        if not is_tar and not (self.reports.is_dir() and any(self.reports.glob("*.xml"))):
            raise InputLayoutError(f"{self.reports}: expected the OpenI NLMCXR_reports.tgz or a folder of "
                                   f"ecgen-radiology *.xml reports")
        self.images = Path(images) if images else None
        if self.images is not None and not self.images.is_dir():
            raise InputLayoutError(f"--openi-images {self.images} is not a folder")
        self.views = Path(views) if views else None
        self.labels = labels if str(labels) == "mesh" else Path(labels)
        self.split = split   # lists: a file of the report ids (CXRn) forming the test split
        self.test_ids = Path(split.lists) if split.lists else None
        self.institution = institution or self.name
        self.expected = ("ecgen-radiology XML reports with FINDINGS or IMPRESSION text, or images named by "
                         "parentImage id")

    def xml_documents(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of every report, ordered by report number (1.xml, 2.xml, ..., 10.xml)."""
        docs = []
        if self.reports.is_dir():
            docs = [(str(p), p.read_bytes()) for p in self.reports.glob("*.xml")]
        else:
            with tarfile.open(self.reports) as tf:
                for m in tf:
                    if m.isfile() and m.name.endswith(".xml"):
                        docs.append((f"{self.reports}:{m.name}", tf.extractfile(m).read()))
        if not docs:
            raise InputLayoutError(f"{self.reports}: no .xml reports inside")

        def order(doc: tuple[str, bytes]) -> tuple[int, str]:
            stem = Path(doc[0].rsplit(":", 1)[-1]).stem
            return (int(stem), "") if stem.isdigit() else (1 << 62, doc[0])

        return sorted(docs, key=order)

    def load_views(self) -> dict[str, str]:
        """image_key -> view (upper case) from one of the three published view tables."""
        if self.views is None:
            return {}
        header, _ = csv_rows(self.views)
        if {"filename", "projection"} <= set(header):  # Kaggle indiana_projections.csv
            pairs = [("CXR" + r["filename"].strip().removesuffix(".png").removesuffix(".dcm"),
                      r["projection"]) for r in csv_dicts(self.views, ("filename", "projection"))]
        else:
            column = next((c for c in ("tsne-view", "View Position") if c in header), None)
            if "imageid" not in header or column is None:
                raise InputLayoutError(
                    f"{self.views}: expected a view table: nlmcxr_tsne_pa.csv (imageid,tsne-view), "
                    f"nlmcxr_dicom_metadata.csv (imageid,...,View Position,...) or indiana_projections.csv "
                    f"(uid,filename,projection); found columns {header[:8]}")
            pairs = [(r["imageid"], r[column]) for r in csv_dicts(self.views, ("imageid",))]
        # A blank view (many DICOM rows) is unknown, the same as not listed.
        return {image_key(i): v.strip().upper() for i, v in pairs if v.strip()}

    def load_label_csv(self, rejects: RejectLog) -> dict[str, dict[str, int | None]]:
        header, _ = csv_rows(self.labels)
        extra = sorted(set(header) - set(CXR14) - {"filename", "normal"})
        if "filename" not in header or extra:
            raise InputLayoutError(f"{self.labels}: expected columns filename,{','.join(CXR14)}[,normal]; "
                                   f"found unknown column(s) {extra}, header {header}")
        out = {}
        for r in csv_dicts(self.labels, ("filename",)):
            try:
                out[r["filename"].strip()] = {n: parse_label(r.get(n) or "") for n in CXR14}
            except ValueError as e:
                rejects.reject("bad_label_value", file=str(self.labels), key=r["filename"], detail=str(e))
        return out

    def index_images(self) -> dict[str, str]:
        """image_key(parentImage id) -> file. 'CXR1_1_IM-0001-3001.png' and the Kaggle name
        '1_IM-0001-3001.dcm.png' both map to 'CXR1_IM-0001-3001'."""
        out: dict[str, str] = {}
        for p in sorted(self.images.iterdir()):
            if p.suffix.lower() not in (".png", ".jpg", ".jpeg") or not p.is_file():
                continue
            stem = p.name[: -len(p.suffix)]
            if stem.endswith(".dcm"):
                stem = "CXR" + stem[: -len(".dcm")]
            out.setdefault(image_key(stem), str(p))
        return out

    def items(self, rejects: RejectLog) -> Iterator[SourceItem]:
        views = self.load_views()
        gold = None if self.labels == "mesh" else self.load_label_csv(rejects)
        test_ids = None
        if self.test_ids is not None:
            test_ids = {t.strip() for t in self.test_ids.read_text(encoding="utf-8").split() if t.strip()}
        images = self.index_images() if self.images is not None else None
        seen: set[str] = set()
        for file, data in self.xml_documents():
            try:
                doc = parse_report_xml(data)
            except ET.ParseError as e:
                rejects.reject("malformed_xml", file=file, detail=str(e))
                continue
            uid = doc["uid"]
            if not uid:
                rejects.reject("no_report_id", file=file)
                continue
            if uid in seen:
                rejects.reject("duplicate_key", file=file, key=uid)
                continue
            seen.add(uid)
            s = doc["sections"]
            text = extract_report(f"FINDINGS: {s.get('FINDINGS', '')}\n\n"
                                  f"IMPRESSION: {s.get('IMPRESSION', '')}")
            image_id, image_path = self.pick_image(doc["images"], views, images, rejects)
            if not text and image_path is None:
                rejects.reject("empty_report", file=file, key=uid,
                               detail="no FINDINGS/IMPRESSION and no image")
                continue
            if gold is None:
                labels = mesh_labels(doc["mesh"])
            else:
                labels = gold.get(uid)
                if labels is None:
                    rejects.note("report not in label CSV (labels null)")
                    labels = dict.fromkeys(CXR14)
            if test_ids is not None:
                split = "test" if uid in test_ids else "train"
            else:
                split = self.split.hashed(uid)
            meta = {"institution": self.institution, "patient_id": uid, "study_id": uid,
                    "view": views.get(image_key(image_id), "") if image_id else "", "split": split}
            if image_path is None:
                meta["source_file"] = file
            yield SourceItem(key=make_key(self.institution, uid, image_id or "report"), meta=meta,
                             text=text or None, labels=labels, image_path=image_path)

    def pick_image(self, ids: list[str], views: dict[str, str], images: dict[str, str] | None,
                   rejects: RejectLog) -> tuple[str | None, str | None]:
        """(image id, path) of the report's frontal image on disk, or (None, None) with a note why."""
        if images is None:
            return None, None
        if not ids:
            rejects.note("report without image (text only)")
            return None, None
        # Known frontal views first, then images of unknown view; known laterals never.
        known = [i for i in ids if views.get(image_key(i)) in FRONTAL]
        candidates = known + [i for i in ids if image_key(i) not in views] if views else ids[:1]
        if not candidates:
            rejects.note("report without frontal image (text only)")
            return None, None
        for image_id in candidates:
            if image_key(image_id) in images:
                return image_id, images[image_key(image_id)]
        rejects.note("image absent from disk (text only)")
        return None, None


# ----------------------------------------------------------------------------- the Kaggle CSV + NegBio gold
# (the OpenI text benchmark and the labeller's score read the reports this way, not from the XML)


def read_openi_reports(openi_dir: str | Path) -> dict[str, str]:
    """{'CXR<uid>': findings + impression} from the Kaggle indiana_reports.csv."""
    path = Path(openi_dir) / "indiana_reports.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "uid" not in rows[0]:
        raise ValueError(f"{path}: expected columns uid, findings, impression")
    return {f"CXR{r['uid']}": " ".join(x for x in (r["findings"], r["impression"]) if x).strip()
            for r in rows}


def read_openi_gold(openi_dir: str | Path) -> dict[str, dict[str, int]]:
    """{'CXR<n>': {CXR14 finding: 0/1}} from NegBio's openi_gld_std14.csv."""
    path = Path(openi_dir) / "openi_gld_std14.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = set(CXR14) - set(rows[0]) if rows else set(CXR14)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return {r["filename"]: {n: int(r[n]) for n in CXR14} for r in rows}
