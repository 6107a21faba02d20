"""Any institution's data, described by a CSV manifest (source name "csv").

One row per record. Columns (names are matched case-insensitively; spaces and '-' read as '_'):

    patient_id            required; also drives the split when `split` is absent or blank
    image                 image file, relative to the manifest's folder               } at least
    report                the report text itself                                         } one of
    report_file           a report text file, relative to the manifest's folder          } these
    split                 train / val / test (validate, valid, validation -> val); blank -> hash
    study_id, view        optional
    <finding columns>     one per finding of the label space, e.g. "Pleural Effusion" or
                          "pleural_effusion": 1 / 0 / -1 / blank (1.0, 0.0, -1.0 accepted)

The label space is --csv-label-space (chexpert14, cxr14, none), or the institution's own findings:
--csv-labels covid,pneumonia,no_finding (or --csv-labels-file, one name per line), recorded as
"custom:covid,pneumonia,no_finding" in index.json and every labels.json; fine-tuning, evaluation,
tables, plots and the sweep read it from there.

Any other column is an error naming it, unless --csv-ignore-extra-columns (then noted and ignored).
Image and report paths must resolve (symbolic links followed) inside the manifest's folder or a root
named with --csv-allow-root (recorded in index.json); any other path, `../../etc/hostname` or an
absolute one, is rejected with its reason, so a manifest can never pull in files from elsewhere.
Report text with FINDINGS / IMPRESSION headers is reduced to those sections (`extract_report`);
text without them is kept whole, cleaned. A manifest or report file that is not UTF-8 is decoded
as cp1252 (noted). Rows with fewer or more fields than the header, a path outside the allowed roots, a
missing file, an unknown split, a bad label value, a duplicate key or nothing to write are rejected
with the reason.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import re
from collections.abc import Iterator
from pathlib import Path

from mixvlp_ds.labels import LABEL_SPACES, custom_label_space, label_names
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import InputLayoutError, RejectLog, SourceItem
from mixvlp_ds.shard.sources._files import HASH_SPLIT, SplitRule, parse_label, read_report
from mixvlp_ds.text.sections import clean_text, extract_report, split_sections

HELP = ("Your own data: a CSV manifest with image (path relative to the manifest), report or report_file, "
        "patient_id, split, optional study_id/view, and one column per finding of --csv-label-space.")

COLUMNS = ("patient_id", "image", "report", "report_file", "split", "study_id", "view")
SPLITS = {"train": "train", "val": "val", "validate": "val", "valid": "val", "validation": "val",
          "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("csv source (--source csv)")
    g.add_argument("--csv-manifest", help="manifest CSV(.gz): one row per record (see docs/sources.md)")
    g.add_argument("--csv-label-space", choices=sorted(LABEL_SPACES), default="chexpert14",
                   help="label space of the finding columns (default chexpert14; none: no labels)")
    g.add_argument("--csv-labels", default=None, metavar="NAME[,NAME...]",
                   help="the institution's own findings (a custom label space; replaces --csv-label-space)")
    g.add_argument("--csv-labels-file", default=None, metavar="FILE",
                   help="the same, one finding name per line")
    g.add_argument("--csv-ignore-extra-columns", action="store_true",
                   help="ignore columns that are neither known fields nor findings (default: error)")
    g.add_argument("--csv-val-fraction", type=float, default=0.1, help="blank split: hash val share")
    g.add_argument("--csv-test-fraction", type=float, default=0.2, help="blank split: hash test share")
    g.add_argument("--csv-allow-root", action="append", default=[], metavar="DIR",
                   help="a folder outside the manifest's that image/report paths may point into (repeatable)")


def label_space_of(args: argparse.Namespace) -> str:
    """--csv-labels / --csv-labels-file (a custom space) or --csv-label-space."""
    labels, path = getattr(args, "csv_labels", None), getattr(args, "csv_labels_file", None)
    if labels and path:
        raise InputLayoutError("give --csv-labels or --csv-labels-file, not both")
    if path:
        try:
            labels = ",".join(line.strip() for line in Path(path).read_text().splitlines() if line.strip())
        except OSError as e:
            raise InputLayoutError(f"--csv-labels-file {path}: {e}") from e
    if not labels:
        return args.csv_label_space
    try:
        return custom_label_space(labels.split(","))
    except ValueError as e:
        raise InputLayoutError(f"--csv-labels: {e}") from e


def build(args: argparse.Namespace) -> CSVManifestSource:
    if not args.csv_manifest:
        raise InputLayoutError("--source csv needs --csv-manifest FILE")
    return CSVManifestSource(args.csv_manifest, label_space=label_space_of(args),
                             ignore_extra_columns=args.csv_ignore_extra_columns,
                             split=SplitRule(None, args.csv_val_fraction, args.csv_test_fraction),
                             institution=args.institution, allow_roots=args.csv_allow_root)


def column_key(name: str) -> str:
    """'Pleural Effusion' / 'pleural-effusion' / 'Pleural_Effusion' -> 'pleural_effusion'."""
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


class CSVManifestSource:
    name = "csv"

    def __init__(self, manifest: str | Path, label_space: str = "chexpert14",
                 ignore_extra_columns: bool = False, split: SplitRule = HASH_SPLIT,
                 institution: str | None = None, allow_roots: list[str | Path] = ()):
        self.manifest = Path(manifest)
        if not self.manifest.is_file():
            raise InputLayoutError(f"manifest {self.manifest} does not exist")
        label_names(label_space)  # ValueError naming the known spaces
        self.label_space = label_space
        self.ignore_extra_columns = ignore_extra_columns
        if split.lists is not None:
            raise ValueError(f"csv source: split lists {split.lists} are not read; the manifest's split "
                             f"column gives each row's split (blank: the patient hash)")
        self.split = split
        self.institution = institution or self.name
        self.folder = self.manifest.parent
        self.roots = [self.folder.resolve()] + [Path(r).resolve() for r in allow_roots]
        self.expected = f"rows of {self.manifest} with an existing image file and/or non-empty report text"

    def read_rows(self, rejects: RejectLog) -> tuple[list[str], list[list[str]]]:
        data = self.manifest.read_bytes()
        if self.manifest.suffix == ".gz":
            data = gzip.decompress(data)
        text, encoding = read_report(data)
        if encoding != "utf-8":
            rejects.note(f"manifest decoded as {encoding}")
        rows = list(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
        if not rows:
            raise InputLayoutError(f"{self.manifest}: empty file, expected a header with patient_id "
                                   f"and image and/or report columns")
        return rows[0], rows[1:]

    def map_columns(self, header: list[str], rejects: RejectLog) -> tuple[dict[str, int], dict[str, int]]:
        """(field -> column index, finding -> column index); unknown columns raise unless ignored."""
        findings = {column_key(f): f for f in label_names(self.label_space)}
        fields: dict[str, int] = {}
        labels: dict[str, int] = {}
        extra = []
        for i, name in enumerate(header):
            key = column_key(name)
            if key in COLUMNS and key not in fields:
                fields[key] = i
            elif key in findings and findings[key] not in labels:
                labels[findings[key]] = i
            else:
                extra.append(name)
        if extra and not self.ignore_extra_columns:
            raise InputLayoutError(
                f"{self.manifest}: unknown column(s) {extra} (or repeated); expected {list(COLUMNS)} and the "
                f"findings of label space {self.label_space!r}: {list(label_names(self.label_space))}. "
                f"Pass --csv-labels NAME,... to keep them as the institution's own label space, or "
                f"--csv-ignore-extra-columns to ignore them")
        for name in extra:
            rejects.note(f"ignored manifest column {name!r}")
        if "patient_id" not in fields or not {"image", "report", "report_file"} & set(fields):
            raise InputLayoutError(f"{self.manifest}: needs a patient_id column and at least one of "
                                   f"image, report, report_file; found {header}")
        return fields, labels

    def inside_roots(self, value: str, rejects: RejectLog, key: str, where: str) -> Path | None:
        """The file a manifest cell names, or None (rejected) when it resolves outside the roots."""
        path = self.folder / value
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            rejects.reject("path_outside_roots", file=where, key=key,
                           detail=f"{value!r} resolves to {resolved}, outside {[str(r) for r in self.roots]} "
                                  f"(allow a folder with --csv-allow-root)")
            return None
        return path

    def report_text(self, row: dict[str, str], rejects: RejectLog, key: str,
                    where: str) -> tuple[str | None, bool]:
        """(cleaned report or None, ok). ok=False: the row is rejected (report file missing, or
        outside the allowed roots)."""
        raw = row.get("report", "")
        if row.get("report_file"):
            path = self.inside_roots(row["report_file"], rejects, key, where)
            if path is None:
                return None, False
            try:
                raw, encoding = read_report(path.read_bytes())
            except FileNotFoundError:
                rejects.reject("report_file_missing", file=str(path), key=key)
                return None, False
            if encoding != "utf-8":
                rejects.note(f"report decoded as {encoding}")
            if not raw.strip() and row.get("image"):  # without an image, the row itself is rejected
                rejects.reject("empty_report", file=str(path), key=key, detail="image written without text")
        sections = split_sections(raw) if raw.strip() else {}
        text = extract_report(raw) if {"findings", "impression"} & set(sections) else clean_text(raw)
        return text or None, True

    def items(self, rejects: RejectLog) -> Iterator[SourceItem]:
        header, rows = self.read_rows(rejects)
        fields, label_cols = self.map_columns(header, rejects)
        names = label_names(self.label_space)
        seen: set[str] = set()
        for line, cells in enumerate(rows, start=2):
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                rejects.reject("malformed_row", file=f"{self.manifest}:{line}",
                               detail=f"{len(cells)} fields, the header has {len(header)}: {cells}")
                continue
            row = {f: cells[i].strip() for f, i in fields.items()}
            patient = row["patient_id"]
            image = row.get("image", "")
            study = row.get("study_id", "")
            key = make_key(self.institution, study or patient, Path(image).stem if image else "report")
            where = f"{self.manifest}:{line}"
            if not patient:
                rejects.reject("missing_patient_id", file=where, key=key)
                continue
            if key in seen:
                rejects.reject("duplicate_key", file=where, key=key)
                continue
            split = SPLITS.get(row.get("split", "").lower()) if row.get("split") else \
                self.split.hashed(patient)
            if split is None:
                rejects.reject("unknown_split", file=where, key=key,
                               detail=f"{row['split']!r}; expected train, val (validate) or test")
                continue
            try:
                labels = {n: parse_label(cells[label_cols[n]]) if n in label_cols else None for n in names}
            except ValueError as e:
                rejects.reject("bad_label_value", file=where, key=key, detail=str(e))
                continue
            image_path = None
            if image:
                image_path = self.inside_roots(image, rejects, key, where)
                if image_path is None:
                    continue
                if not image_path.is_file():
                    rejects.reject("image_missing", file=str(image_path), key=key)
                    continue
            text, ok = self.report_text(row, rejects, key, where)
            if not ok:
                continue
            if text is None and image_path is None:
                rejects.reject("empty_report", file=where, key=key, detail="no image and no report text")
                continue
            seen.add(key)
            meta = {"institution": self.institution, "patient_id": patient, "study_id": study or patient,
                    "view": row.get("view", ""), "split": split}
            if image_path is None:
                meta["source_file"] = where
            yield SourceItem(key=key, meta=meta, text=text, labels=labels if names else None,
                             image_path=str(image_path) if image_path else None)
