"""Small in-test sources and image files for the shard tests (not a test module).

Also a `SourceModule` (HELP / add_arguments / build) so the CLI can be driven with `--source kit`
by registering this module in `mixvlp_ds.shard.sources.SOURCES`."""

from __future__ import annotations

import argparse
import io
import os
import signal
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import RejectLog, SourceItem

REPORT = "FINDINGS: The heart is mildly enlarged. No pleural effusion.\nIMPRESSION: Cardiomegaly."


def cxr_like(seed: int, h: int = 96, w: int = 80) -> np.ndarray:
    """A deterministic (H, W) uint8 image with smooth structure and noise (module-level: picklable)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(xx / (7 + seed % 5)) * np.cos(yy / 11) + rng.normal(0, 12, (h, w))
    return np.clip(base, 0, 255).astype(np.uint8)


def failing_image(seed: int) -> np.ndarray:
    raise RuntimeError(f"simulated generator failure {seed}")


def write_png(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr).save(path)
    return path


def labels_for(i: int) -> dict:
    return {"Cardiomegaly": 1 if i % 2 else 0, "Pleural Effusion": -1 if i % 3 == 0 else None,
            "No Finding": 0}


def item(i: int, split: str = "train", *, image_path=None, image_fn=None, text=None, labels=None,
         key: str | None = None) -> SourceItem:
    return SourceItem(
        key=key or make_key("kit", f"s{i:04d}", f"img{i}"),
        meta={"institution": "kit", "patient_id": f"p{i // 2}", "study_id": f"s{i:04d}", "view": "PA",
              "split": split},
        text=text, labels=labels if labels is not None else labels_for(i),
        image_path=None if image_path is None else str(image_path), image_fn=image_fn)


def mixed_items(tmp: Path, n: int = 12) -> list[SourceItem]:
    """image files, generated images, image+text and text-only records across the three splits."""
    tmp.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        split = ("train", "train", "val", "test")[i % 4]
        kind = i % 3
        if kind == 0:
            path = write_png(tmp / f"img{i}.png", cxr_like(i, 90 + i, 70 + 2 * i))
            out.append(item(i, split, image_path=path, text=f"{REPORT} case {i}"))
        elif kind == 1:
            out.append(item(i, split, image_fn=partial(cxr_like, i)))
        else:
            out.append(item(i, split, text=f"FINDINGS: Clear lungs {i}. IMPRESSION: Normal."))
    return out


class ListSource:
    """Yields the given items in order; `fail_after` raises after that many items; `kill_after`
    SIGKILLs its own process (a crash that runs no cleanup at all)."""

    def __init__(self, items, name="kit", label_space="chexpert14", institution="kit",
                 fail_after: int | None = None, kill_after: int | None = None, source_rejects=()):
        self.items_, self.name, self.label_space = list(items), name, label_space
        self.institution = institution
        self.fail_after, self.kill_after, self.source_rejects = fail_after, kill_after, source_rejects

    def items(self, rejects: RejectLog):
        for reason, file in self.source_rejects:
            rejects.reject(reason, file)
        for n, it in enumerate(self.items_):
            if self.fail_after is not None and n == self.fail_after:
                raise RuntimeError(f"simulated source failure after {n} items")
            if self.kill_after is not None and n == self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            yield it


# ---- bad and unusual files

def png16(path: Path, lo: int = 1000, hi: int = 5000, h: int = 40, w: int = 48) -> Path:
    a = np.linspace(lo, hi, h * w).reshape(h, w).astype(np.uint16)
    Image.fromarray(a).save(path)
    return path


def cmyk_jpeg(path: Path, k: int = 100, h: int = 40, w: int = 48) -> Path:
    Image.new("CMYK", (w, h), (0, 0, 0, k)).save(path, quality=95)
    return path


def rgba_png(path: Path, h: int = 40, w: int = 48) -> Path:
    a = np.zeros((h, w, 4), np.uint8)
    a[..., :3] = 200
    a[..., 3] = 255
    a[:, : w // 2, 3] = 0  # left half fully transparent -> black when composited
    Image.fromarray(a, "RGBA").save(path)
    return path


def palette_png(path: Path, h: int = 40, w: int = 48) -> Path:
    Image.fromarray(cxr_like(3, h, w)).convert("P").save(path)
    return path


def truncated_png(path: Path, seed: int = 5) -> Path:
    buf = io.BytesIO()
    Image.fromarray(cxr_like(seed, 128, 128)).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(cxr_like(6, 128, 128)).save(buf, format="JPEG", quality=90)
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return path


# ---- SourceModule protocol, for driving the CLI with --source kit

HELP = "test kit: --kit-dir holds PNGs; one image-only record per PNG (bad files become rejects)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("kit source (--source kit)")
    g.add_argument("--kit-dir", required=False, help="folder of PNG files")


def build(args: argparse.Namespace) -> ListSource:
    from mixvlp_ds.shard.source import InputLayoutError

    if not args.kit_dir or not Path(args.kit_dir).is_dir():
        raise InputLayoutError(f"{args.kit_dir}: expected a folder of .png files (--kit-dir)")
    files = sorted(Path(args.kit_dir).glob("*.png"))
    items = [item(i, ("train", "val", "test")[i % 3], image_path=f, labels={}) for i, f in enumerate(files)]
    return ListSource(items, institution=args.institution or "kit")


__all__ = ["CHEXPERT14", "ListSource", "mixed_items", "item", "cxr_like"]
