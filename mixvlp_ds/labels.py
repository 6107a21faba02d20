"""Label spaces: the findings a label vector names, in order. A leaf of the package (it imports
nothing of mixvlp_ds), so every stage can name findings: sources writing shards, readers and
collation, the applications' heads and tables.

A label space is a name: a built-in one (a key of LABEL_SPACES) or an institution's own
("custom:name,name,..."). The shard format (`mixvlp_ds.shard.format`) writes it into every
labels.json and index.json.
"""

from __future__ import annotations

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
