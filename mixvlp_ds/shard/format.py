"""The shard sample format: the contract between `mixvlp_ds.shard` and everything that reads shards.

One sample (one WebDataset tar member group, or one MDS row) per image, or per report for a
text-only record:

    __key__        "<institution>/<study>/<image>" made safe: [A-Za-z0-9_-] and '.' replaced by '_'
    img.<S>.png    8-bit grayscale PNG, S x S            (the finest level, "down")
    img.<S/2>.png  8-bit grayscale PNG, S/2 x S/2        ("mid")
    img.<S/4>.png  8-bit grayscale PNG, S/4 x S/4        ("up")
    txt            UTF-8 report text: FINDINGS + IMPRESSION, cleaned (absent for image-only records)
    labels.json    {"space": "<label space>", "values": {finding: 1 | 0 | -1 | null}}
    meta.json      {"institution", "patient_id", "study_id", "view", "split",
                    "orig_width", "orig_height", "orig_bit_depth", "source_file", "source_sha1"}

Values in labels.json: 1 positive, 0 negative, -1 uncertain, null not mentioned; the label spaces
and their findings are `mixvlp_ds.labels`.
A record has at least one of (image, txt). Each output folder holds `index.json` (see
`mixvlp_ds.shard.index`) and `rejects.jsonl` (one JSON line per skipped input, with the reason).
"""

from __future__ import annotations

import re

from mixvlp_ds.labels import label_names

SCHEMA_VERSION = 1
DEFAULT_IMAGE_SIZE = 224
NUM_LEVELS = 3

META_FIELDS = (
    "institution", "patient_id", "study_id", "view", "split",
    "orig_width", "orig_height", "orig_bit_depth", "source_file", "source_sha1",
)
SPLITS = ("train", "val", "test")

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-/]")


def level_sizes(image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[int, int, int]:
    """Pyramid side lengths, finest first: (S, S/2, S/4)."""
    if image_size % 4:
        raise ValueError(f"image size {image_size} must be divisible by 4 for a 3-level pyramid")
    return image_size, image_size // 2, image_size // 4


def image_field(size: int) -> str:
    """Tar member extension of one pyramid level, e.g. 'img.224.png'."""
    return f"img.{size}.png"


def make_key(*parts: str) -> str:
    """A WebDataset-safe sample key. WebDataset splits the member name at the first '.', so
    keys never contain dots; '/' is kept (it reads as a folder inside the tar)."""
    return "/".join(_UNSAFE.sub("_", str(p)) for p in parts if p != "")


def label_values(space: str, values: dict[str, int | None]) -> dict[str, int | None]:
    """Check a label dict against its space; unknown names or values are a ValueError."""
    names = label_names(space)
    unknown = set(values) - set(names)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not in label space {space!r}")
    out: dict[str, int | None] = {}
    for name in names:
        v = values.get(name)
        if v is not None and v not in (1, 0, -1):
            raise ValueError(f"label {name}={v!r}: expected 1, 0, -1 or null")
        out[name] = None if v is None else int(v)
    return out
