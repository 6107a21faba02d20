"""The configs that ship inside the package, so an installed mixvlp-ds finds its defaults from any
directory (importlib.resources): `ds_configs/*.json` (DeepSpeed) and `configs/*.yaml` (run, data,
fine-tuning and sweep configs). In a checkout, the top-level `ds_configs/` and `configs/` are links
to these folders, for users who read and edit them there.

    resolve("configs/tiny_cpu.yaml", "configs")   # that file when it exists, else the shipped one
    resolve("tiny_cpu", "configs")                 # the shipped configs/tiny_cpu.yaml
    resolve("zero2.json", "ds_configs")            # the shipped ds_configs/zero2.json
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

SUFFIX = {"configs": ".yaml", "ds_configs": ".json", "prompts": ".yaml"}


def folder(kind: str) -> Path:
    """The shipped folder of `kind` ("configs" or "ds_configs")."""
    if kind not in SUFFIX:
        raise ValueError(f"kind {kind!r} is not one of {sorted(SUFFIX)}")
    return Path(str(files(__name__) / kind))


def resolve(path: str | Path, kind: str) -> Path:
    """`path` itself when it exists; otherwise the shipped config it names ("configs/x.yaml",
    "x.yaml" or "x", and "data/mixup2" for a sub-folder). FileNotFoundError names both places."""
    given = Path(path)
    if given.exists():
        return given
    rel = Path(*given.parts[1:]) if given.parts and given.parts[0] == kind else given
    shipped = folder(kind) / rel
    if not shipped.suffix:
        shipped = shipped.with_suffix(SUFFIX[kind])
    if shipped.is_file():
        return shipped
    names = sorted(str(p.relative_to(folder(kind))) for p in folder(kind).rglob(f"*{SUFFIX[kind]}"))
    raise FileNotFoundError(f"{path}: no such file, and no shipped {kind} of that name; shipped: {names}")
