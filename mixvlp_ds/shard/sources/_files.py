"""Small file helpers shared by the real-dataset sources (nih, mimic, openi, csv).

Not a source itself (the leading underscore keeps it out of `--source` listings).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mixvlp_ds.shard.source import InputLayoutError

# Tried in order; latin-1 maps every byte, so decoding always ends with some text.
REPORT_ENCODINGS = ("utf-8", "cp1252", "latin-1")


def open_text(path: Path) -> io.TextIOBase:
    """Open a text table, gzip-compressed when its name ends in .gz (UTF-8, BOM tolerated)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115


def csv_rows(path: Path) -> tuple[list[str], Iterator[list[str]]]:
    """(header, row iterator) of a CSV(.gz); an empty or undecodable file is an InputLayoutError."""
    fh = open_text(path)
    reader = csv.reader(fh)
    try:
        header = next(reader)
    except StopIteration:
        fh.close()
        raise InputLayoutError(f"{path}: empty file, expected a CSV header line") from None
    except (UnicodeDecodeError, OSError, csv.Error) as e:
        fh.close()
        raise InputLayoutError(f"{path}: cannot read as a UTF-8 CSV: {e}") from None

    def rows() -> Iterator[list[str]]:
        with fh:
            try:
                yield from reader
            except (UnicodeDecodeError, OSError, EOFError, csv.Error) as e:
                raise InputLayoutError(f"{path}: unreadable at line {reader.line_num}: {e}") from None

    return [h.strip() for h in header], rows()


def csv_dicts(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows of a CSV(.gz) as dicts; missing `required` columns are an InputLayoutError."""
    header, rows = csv_rows(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise InputLayoutError(f"{path}: missing column(s) {missing}; expected at least {list(required)}, "
                               f"found {header}")
    for row in rows:
        yield dict(zip(header, row, strict=False))


def find_table(folder: Path, stem: str) -> Path | None:
    """`folder/stem.csv` or `folder/stem.csv.gz`, whichever exists (plain CSV first)."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def read_report(data: bytes) -> tuple[str, str]:
    """Decode report bytes: (text, encoding used). UTF-8 first, then cp1252, then latin-1."""
    for enc in REPORT_ENCODINGS:
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes every byte string")  # pragma: no cover


def hash_fraction(ident: str) -> float:
    """A stable number in [0, 1) from an id (sha1, not Python's salted hash())."""
    return int.from_bytes(hashlib.sha1(ident.encode("utf-8")).digest()[:8], "big") / 2**64


def hash_split(ident: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split of an id (a patient id, so that no patient spans two splits)."""
    u = hash_fraction(ident)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction <= 1):
        raise ValueError(f"split fractions val={val_fraction}, test={test_fraction}: each must be in "
                         f"[0, 1] and their sum at most 1")


@dataclass(frozen=True)
class SplitRule:
    """How a real source assigns its records to train / val / test: the split lists published with
    the data where given, else a hash of the patient id (no patient in two splits) with these shares."""

    lists: str | Path | None = None   # nih: folder of <split>_list.txt; openi: file of test ids; csv: none
    val_fraction: float = 0.1         # hash split: the share of patients in val
    test_fraction: float = 0.2        # hash split: the share of patients in test

    def __post_init__(self) -> None:
        check_fractions(self.val_fraction, self.test_fraction)

    def hashed(self, ident: str) -> str:
        """The hash split of a patient id."""
        return hash_split(ident, self.val_fraction, self.test_fraction)


HASH_SPLIT = SplitRule()   # the sources' default: no lists, 10% val, 20% test


def parse_label(value: str) -> int | None:
    """A label cell -> 1 / 0 / -1 / None (blank). '1.0', '0', '-1.0' accepted; else ValueError."""
    v = value.strip()
    if v == "" or v.lower() in ("nan", "null", "none"):
        return None
    try:
        f = float(v)
    except ValueError:
        raise ValueError(f"label value {value!r}: expected 1, 0, -1 or blank") from None
    if f not in (1.0, 0.0, -1.0):
        raise ValueError(f"label value {value!r}: expected 1, 0, -1 or blank")
    return int(f)
