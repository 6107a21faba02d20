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

Values in labels.json: 1 positive, 0 negative, -1 uncertain, null not mentioned.
A record has at least one of (image, txt). Each output folder holds `index.json` (see
`mixvlp_ds.shard.index`) and `rejects.jsonl` (one JSON line per skipped input, with the reason).
"""

from __future__ import annotations

import re

SCHEMA_VERSION = 1
DEFAULT_IMAGE_SIZE = 224
NUM_LEVELS = 3

# Label spaces. The CheXpert/MIMIC order is the one the synthetic institutions and MIMIC use;
# ChestX-ray14 is NIH's and OpenI's gold standard (openi_gld_std14.csv).
CHEXPERT14 = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum",
    "Fracture", "Lung Lesion", "Lung Opacity", "No Finding", "Pleural Effusion", "Pleural Other",
    "Pneumonia", "Pneumothorax", "Support Devices",
)
CXR14 = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
LABEL_SPACES: dict[str, tuple[str, ...]] = {"chexpert14": CHEXPERT14, "cxr14": CXR14, "none": ()}
# An institution's own label space travels as its name: "custom:covid,pneumonia,no_finding" (the
# finding names in order). It is written into every labels.json and index.json, so each later stage
# knows the findings from the shards alone.
CUSTOM_PREFIX = "custom:"


def custom_label_space(names) -> str:
    """The label space of an institution's own findings, e.g. custom_label_space(["covid", "pneumonia"])."""
    names = [str(n).strip() for n in names]
    bad = [n for n in names if not n or "," in n]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"custom labels {names}: need one or more distinct, non-empty names without ','")
    return CUSTOM_PREFIX + ",".join(names)


def label_names(space: str) -> tuple[str, ...]:
    """The findings of a label space, in order: a built-in one (LABEL_SPACES) or a custom one."""
    if space in LABEL_SPACES:
        return LABEL_SPACES[space]
    if space.startswith(CUSTOM_PREFIX) and space != CUSTOM_PREFIX:
        return tuple(space[len(CUSTOM_PREFIX):].split(","))
    raise ValueError(f"unknown label space {space!r}; known: {sorted(LABEL_SPACES)} or "
                     f"'{CUSTOM_PREFIX}name,name,...' (an institution's own findings)")


def is_label_space(space: str) -> bool:
    try:
        label_names(space)
    except ValueError:
        return False
    return True

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
