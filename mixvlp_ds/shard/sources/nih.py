"""NIH ChestX-ray14, as published: image-only records with ChestX-ray14 ("cxr14") labels.

Expected layout under --nih-dir:

    Data_Entry_2017*.csv[.gz]     metadata, one row per image (the 2020 file is preferred when
                                  several match; --nih-metadata picks one explicitly)
    images*/                      image folders: images/, images_001/images/ (NIH box/Kaggle),
                                  images_512/ (resized JPEGs named by the image index stem)
    train_val_list.txt            optional official split (one image name per line); with it,
    test_list.txt                 validation images are drawn from train_val by patient hash

The v2020 header has two bracketed names that span two columns each
(`OriginalImage[Width,Height]`, `OriginalImagePixelSpacing[x,y]`); they are expanded to
`OriginalImage[Width]`, `OriginalImage[Height]`, ... so every column has its own name.

Labels come from "Finding Labels" ('|'-separated): a listed finding is 1, every other finding 0,
"No Finding" makes all 14 zero. The split is, in order of preference: --nih-split-lists (a
folder with CheXNet-style train_list.txt / val_list.txt / test_list.txt), the official lists in
--nih-dir, else a patient-level hash split (sha1 of the patient id; no patient in two splits).

Rows whose image is not on disk are counted (note "image absent from disk"), not rejected: the
published metadata lists all 112,120 images and most users hold a subset.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

from mixvlp_ds.labels import CXR14
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import InputLayoutError, RejectLog, SourceItem
from mixvlp_ds.shard.sources._files import HASH_SPLIT, SplitRule, csv_rows, hash_fraction

HELP = ("NIH ChestX-ray14 as published (Data_Entry_2017*.csv + images*/ folders): image-only, "
        "cxr14 labels from 'Finding Labels', official or patient-hash split; images absent from disk "
        "are counted and skipped.")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm")
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("nih source (--source nih)")
    g.add_argument("--nih-dir", help="NIH ChestX-ray14 folder (holds Data_Entry_2017*.csv and images*/)")
    g.add_argument("--nih-metadata", help="metadata CSV to use (default: newest Data_Entry_2017*.csv[.gz])")
    g.add_argument("--nih-images", default="images*",
                   help="glob of image folders under --nih-dir (default: images*)")
    g.add_argument("--nih-split-lists",
                   help="folder with train_list.txt/val_list.txt/test_list.txt (e.g. the CheXNet split)")
    g.add_argument("--nih-val-fraction", type=float, default=0.1, help="patient-hash split: val share")
    g.add_argument("--nih-test-fraction", type=float, default=0.2, help="patient-hash split: test share")


def build(args: argparse.Namespace) -> NIHSource:
    if not args.nih_dir:
        raise InputLayoutError("--source nih needs --nih-dir DIR (the folder holding Data_Entry_2017*.csv)")
    split = SplitRule(args.nih_split_lists, args.nih_val_fraction, args.nih_test_fraction)
    return NIHSource(args.nih_dir, metadata=args.nih_metadata, image_glob=args.nih_images, split=split,
                     institution=args.institution)


def expand_header(cells: list[str]) -> list[str]:
    """Give each column of a bracketed multi-column name its own name.

    ['A', 'OriginalImage[Width', 'Height]'] -> ['A', 'OriginalImage[Width]', 'OriginalImage[Height]']
    """
    out: list[str] = []
    i = 0
    while i < len(cells):
        cell = cells[i].strip()
        if "[" in cell and "]" not in cell:
            base, first = cell.split("[", 1)
            parts = [first]
            while i + 1 < len(cells) and "]" not in parts[-1]:
                i += 1
                parts.append(cells[i].strip())
            out += [f"{base}[{p.rstrip(']').strip()}]" for p in parts]
        else:
            out.append(cell)
        i += 1
    return out


def read_list(path: Path) -> set[str]:
    """Image names of a split list (first whitespace-separated token of each line)."""
    with open(path, encoding="utf-8") as fh:
        return {line.split()[0] for line in fh if line.strip()}


class NIHSource:
    name = "nih"
    label_space = "cxr14"

    def __init__(self, root: str | Path, metadata: str | Path | None = None, image_glob: str = "images*",
                 split: SplitRule = HASH_SPLIT, institution: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputLayoutError(f"NIH folder {self.root} does not exist")
        self.metadata = Path(metadata) if metadata else self._find_metadata()
        if not self.metadata.is_file():
            raise InputLayoutError(f"NIH metadata {self.metadata} does not exist")
        self.image_dirs = sorted(p for p in self.root.glob(image_glob) if p.is_dir())
        if not self.image_dirs:
            raise InputLayoutError(f"{self.root}: no image folder matching {image_glob!r}; expected "
                                   f"images/, images_001/images/ or images_512/ next to the metadata CSV")
        self.split = split   # lists: a folder of CheXNet-style train/val/test_list.txt
        self.split_lists = Path(split.lists) if split.lists else None
        self.institution = institution or self.name
        # Shown by the pipeline when nothing could be written.
        self.expected = (f"images named by the 'Image Index' of {self.metadata.name} (e.g. 00000001_000.png, "
                         f"or .jpg with the same stem) in {', '.join(p.name for p in self.image_dirs)}")

    def _find_metadata(self) -> Path:
        found = sorted(p for p in self.root.glob("Data_Entry_2017*.csv*")
                       if p.name.endswith((".csv", ".csv.gz")))
        if not found:
            raise InputLayoutError(f"{self.root}: no Data_Entry_2017*.csv[.gz]; expected the NIH "
                                   f"ChestX-ray14 metadata CSV (header 'Image Index,Finding Labels,...') "
                                   f"in this folder")
        # 'Data_Entry_2017_v2020.csv' sorts after 'Data_Entry_2017.csv': prefer the newest labels.
        return found[-1]

    def index_images(self, rejects: RejectLog) -> dict[str, str]:
        """Image index ('00000001_000.png') -> path on disk. An exact file name wins over a file with
        the same stem and another extension (e.g. images_512/*.jpg); among equals, the first
        folder in sorted order. Each image found in several folders is noted."""
        exact: dict[str, str] = {}
        by_stem: dict[str, str] = {}
        duplicates = 0
        for folder in self.image_dirs:
            nested = folder / "images"  # NIH box / Kaggle: images_001/images/*.png
            for d in (folder, nested) if nested.is_dir() else (folder,):
                with os.scandir(d) as entries:
                    names = sorted(e.name for e in entries if e.is_file())
                for name in names:
                    stem, ext = os.path.splitext(name)
                    if ext.lower() not in IMAGE_EXTENSIONS:
                        continue
                    path = os.path.join(d, name)
                    duplicates += name in exact or stem in by_stem
                    exact.setdefault(name, path)
                    by_stem.setdefault(stem, path)
        if duplicates:
            rejects.note("image found in several folders (first kept)", duplicates)
        return {**{f"{stem}.png": p for stem, p in by_stem.items()}, **exact}

    def split_of(self) -> tuple[dict[str, str] | None, str]:
        """(image name -> split, or None for the patient-hash split; description)."""
        if self.split_lists is not None:
            files = {s: self.split_lists / f"{s}_list.txt" for s in ("train", "val", "test")}
            missing = [str(p) for p in files.values() if not p.is_file()]
            if missing:
                raise InputLayoutError(f"--nih-split-lists: missing {missing}; expected train_list.txt, "
                                       f"val_list.txt and test_list.txt (one image name per line)")
            return {name: s for s, p in files.items() for name in read_list(p)}, str(self.split_lists)
        official = self.root / "train_val_list.txt", self.root / "test_list.txt"
        if all(p.is_file() for p in official):
            split = dict.fromkeys(read_list(official[0]), "train_val")
            split.update(dict.fromkeys(read_list(official[1]), "test"))
            return split, "official train_val_list.txt / test_list.txt"
        return None, "patient-id hash"

    def items(self, rejects: RejectLog) -> Iterator[SourceItem]:
        images = self.index_images(rejects)
        split_by_image, _ = self.split_of()
        header, rows = csv_rows(self.metadata)
        header = expand_header(header)
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise InputLayoutError(f"{self.metadata}: missing column(s) {missing}; expected the NIH "
                                   f"header 'Image Index,Finding Labels,Follow-up #,Patient ID,...,"
                                   f"View Position,...'")
        col = {c: header.index(c) for c in REQUIRED_COLUMNS}
        width = max(col.values()) + 1
        known = set(CXR14)
        seen: set[str] = set()
        absent = 0
        for line, row in enumerate(rows, start=2):
            if len(row) < width:
                rejects.reject("malformed_row", file=f"{self.metadata}:{line}", detail=str(row))
                continue
            image = row[col["Image Index"]].strip()
            if image in seen:
                rejects.reject("duplicate_key", file=str(self.metadata), key=image, detail=f"line {line}")
                continue
            seen.add(image)
            findings = {f.strip() for f in row[col["Finding Labels"]].split("|") if f.strip()}
            unknown = findings - known - {"No Finding"}
            if unknown or not findings:
                rejects.reject("unknown_finding_label", file=str(self.metadata), key=image,
                               detail=f"line {line}: {sorted(unknown) or 'empty'}; expected {list(CXR14)}")
                continue
            path = images.get(image)
            if path is None:
                absent += 1
                continue
            patient = row[col["Patient ID"]].strip()
            patient = f"{int(patient):08d}" if patient.isdigit() else patient
            if split_by_image is None:
                split = self.split.hashed(patient)
            else:
                split = split_by_image.get(image)
                if split is None:
                    rejects.reject("not_in_split_lists", file=str(self.metadata), key=image)
                    continue
                if split == "train_val":
                    split = "val" if hash_fraction(patient) < self.split.val_fraction else "train"
            stem = os.path.splitext(image)[0]
            yield SourceItem(
                key=make_key(self.institution, stem),
                meta={"institution": self.institution, "patient_id": patient, "study_id": stem,
                      "view": row[col["View Position"]].strip(), "split": split},
                labels={name: int(name in findings) for name in CXR14},
                image_path=path,
            )
        if absent:
            rejects.note("image absent from disk", absent)
