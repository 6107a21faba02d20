"""MIMIC-CXR-JPG: frontal images with their study's report (FINDINGS + IMPRESSION) and CheXpert labels.

Expected layout under --mimic-dir (as distributed by PhysioNet):

    mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id,subject_id,study_id,...,ViewPosition,...
    mimic-cxr-2.0.0-split.csv[.gz]      dicom_id,study_id,subject_id,split  (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv[.gz]   subject_id,study_id,<14 CheXpert findings>  (or -negbio)
    files/p10/p10000032/s50414267/<dicom_id>.jpg

Reports are not part of MIMIC-CXR-JPG: they come from MIMIC-CXR (mimic-cxr-reports.zip, unzipped)
as files/pXX/pNNNNNNNN/sNNNNNNNN.txt under --mimic-reports (default: --mimic-dir).

One record per frontal image (ViewPosition in --mimic-views, default PA,AP); every image of a
study carries the study's report and labels. Label cells 1.0 / 0.0 / -1.0 / blank become
1 / 0 / -1 / null. Split "validate" is written as "val".

Bad input: images absent from disk and non-frontal views are counted (notes); a study without a
report file is written image-only (noted); an empty report is a reject ("empty_report"; the image
is still written, without text); a non-UTF-8 report is decoded as cp1252 (noted); a dicom_id
listed twice, a missing split row, an unknown split or a bad label cell are rejects.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import InputLayoutError, RejectLog, SourceItem
from mixvlp_ds.shard.sources._files import csv_dicts, find_table, parse_label, read_report
from mixvlp_ds.text.sections import extract_report

HELP = ("MIMIC-CXR-JPG (files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg + mimic-cxr-2.0.0-{metadata,split,"
        "chexpert}.csv.gz; reports sNNNNNNNN.txt): frontal images, FINDINGS+IMPRESSION, chexpert14 labels.")

PREFIX = "mimic-cxr-2.0.0"
SPLITS = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("mimic source (--source mimic)")
    g.add_argument("--mimic-dir", help="MIMIC-CXR-JPG folder (holds files/ and mimic-cxr-2.0.0-*.csv.gz)")
    g.add_argument("--mimic-reports", help="folder holding files/pXX/pNNNNNNNN/sNNNNNNNN.txt "
                                           "(default: --mimic-dir)")
    g.add_argument("--mimic-labels", choices=("chexpert", "negbio", "none"), default="chexpert",
                   help="label table: mimic-cxr-2.0.0-<this>.csv.gz (default chexpert; none: all null)")
    g.add_argument("--mimic-views", default="PA,AP", help="ViewPosition values kept (default PA,AP)")


def build(args: argparse.Namespace) -> MIMICSource:
    if not args.mimic_dir:
        raise InputLayoutError("--source mimic needs --mimic-dir DIR (the MIMIC-CXR-JPG folder)")
    return MIMICSource(args.mimic_dir, reports=args.mimic_reports, labels=args.mimic_labels,
                       views=tuple(v.strip() for v in args.mimic_views.split(",") if v.strip()),
                       institution=args.institution)


def study_folder(subject_id: str, study_id: str) -> str:
    """'10000032', '50414267' -> 'files/p10/p10000032/s50414267'."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}"


class MIMICSource:
    name = "mimic"
    label_space = "chexpert14"

    def __init__(self, root: str | Path, reports: str | Path | None = None, labels: str = "chexpert",
                 views: tuple[str, ...] = ("PA", "AP"), institution: str | None = None):
        self.root = Path(root)
        self.reports = Path(reports) if reports else self.root
        expected = (f"expected {self.root}/files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg and "
                    f"{PREFIX}-metadata.csv.gz, {PREFIX}-split.csv.gz, {PREFIX}-chexpert.csv.gz")
        if not (self.root / "files").is_dir():
            raise InputLayoutError(f"{self.root}: no files/ folder; {expected}")
        self.tables = {t: find_table(self.root, f"{PREFIX}-{t}") for t in ("metadata", "split")}
        if labels != "none":
            self.tables["labels"] = find_table(self.root, f"{PREFIX}-{labels}")
        missing = [f"{PREFIX}-{labels if t == 'labels' else t}.csv[.gz]"
                   for t, p in self.tables.items() if p is None]
        if missing:
            raise InputLayoutError(f"{self.root}: missing {missing}; {expected}")
        self.views = views
        self.institution = institution or self.name
        self.expected = f"frontal ({', '.join(views)}) images listed in the metadata table; {expected}"

    def load_splits(self) -> dict[str, str]:
        return {r["dicom_id"]: r["split"].strip() for r in
                csv_dicts(self.tables["split"], ("dicom_id", "study_id", "subject_id", "split"))}

    def load_labels(self, rejects: RejectLog) -> dict[str, dict[str, int | None]]:
        """study_id -> {finding: 1/0/-1/None}; rows with a bad cell are rejected (their study gets nulls)."""
        path = self.tables.get("labels")
        if path is None:
            return {}
        out = {}
        for r in csv_dicts(path, ("subject_id", "study_id", *CHEXPERT14)):
            try:
                out[r["study_id"].strip()] = {n: parse_label(r[n] or "") for n in CHEXPERT14}
            except ValueError as e:
                rejects.reject("bad_label_value", file=str(path), key=r["study_id"], detail=str(e))
        return out

    def load_report(self, subject: str, study: str, rejects: RejectLog) -> str | None:
        """FINDINGS + IMPRESSION of a study, or None (absent or empty: counted)."""
        path = self.reports / f"{study_folder(subject, study)}.txt"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            rejects.note("report absent from disk (image written without text)")
            return None
        raw, encoding = read_report(data)
        if encoding != "utf-8":
            rejects.note(f"report decoded as {encoding}")
        text = extract_report(raw)
        if not text:
            rejects.reject("empty_report", file=str(path), key=f"s{study}",
                           detail="image written without text")
            return None
        return text

    def items(self, rejects: RejectLog) -> Iterator[SourceItem]:
        splits = self.load_splits()
        labels = self.load_labels(rejects)
        metadata = self.tables["metadata"]
        seen: set[str] = set()
        reports: dict[str, str | None] = {}  # per study: several frontal images share one report
        skipped_views = absent = unlabelled = 0
        for r in csv_dicts(metadata, ("dicom_id", "subject_id", "study_id", "ViewPosition")):
            dicom, subject, study = r["dicom_id"].strip(), r["subject_id"].strip(), r["study_id"].strip()
            view = r["ViewPosition"].strip()
            if view not in self.views:
                skipped_views += 1
                continue
            if dicom in seen:
                rejects.reject("duplicate_key", file=str(metadata), key=dicom)
                continue
            seen.add(dicom)
            split = SPLITS.get(splits.get(dicom, ""))
            if split is None:
                reason = "unknown_split" if dicom in splits else "missing_from_split_file"
                rejects.reject(reason, file=str(self.tables["split"]), key=dicom,
                               detail=splits.get(dicom, ""))
                continue
            image = self.root / study_folder(subject, study) / f"{dicom}.jpg"
            if not image.is_file():
                absent += 1
                continue
            if study not in reports:
                reports[study] = self.load_report(subject, study, rejects)
            study_labels = labels.get(study)
            if study_labels is None:
                unlabelled += 1
                study_labels = dict.fromkeys(CHEXPERT14)
            yield SourceItem(
                key=make_key(self.institution, f"s{study}", dicom),
                meta={"institution": self.institution, "patient_id": subject, "study_id": study,
                      "view": view, "split": split},
                text=reports[study],
                labels=study_labels,
                image_path=str(image),
            )
        for what, n in (("view not frontal (skipped)", skipped_views), ("image absent from disk", absent),
                        ("image without label row (labels null)", unlabelled)):
            if n:
                rejects.note(what, n)
