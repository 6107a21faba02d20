"""Shard conversion speed: 1024x1024 8-bit PNG -> 3-level 224 pyramid (decode, antialiased resize,
PNG encode), in images/s per core for 1 and 2 worker processes, plus a per-stage breakdown and the
PNG compress-level trade-off. Prints tables and writes benchmarks/results/shard_bench.json.

    python benchmarks/shard_bench.py [--images N] [--generated] [--workers 1 2]

Inputs: the real 1024 px ChestX-ray14 PNGs of the test data, nih_cxr14/images_original (8-bit;
one of them RGBA; docs/test_data.md), repeated to N images; `--generated` (or without them) writes synthetic
1024 px PNGs instead. Target: >= 40 images/s per core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.images import decode_gray8_png, load_image
from mixvlp_ds.shard.pipeline import encode_record, ordered_map, worker_pool
from mixvlp_ds.shard.pyramid import encode_png, make_pyramid
from mixvlp_ds.shard.source import SourceItem

REPO = Path(__file__).resolve().parents[1]
# real 1024 px NIH PNGs where `python scripts/fetch_test_data.py` put them ($MIXVLP_TEST_DATA or
# data/real/), else generated images of the same size
REAL = Path(os.environ.get("MIXVLP_TEST_DATA") or REPO / "data" / "real") / "nih_cxr14" / "images_original"
TARGET = 40.0


def input_files(generated: bool, tmp: Path) -> list[Path]:
    if not generated and REAL.is_dir():
        return sorted(REAL.glob("*.png"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024]
    files = []
    for i in range(8):
        body = 110 + 70 * np.exp(-(((xx - 512) / 300) ** 2 + ((yy - 560) / 380) ** 2)) \
            * np.sin(xx / (9 + i)) ** 2
        img = np.clip(body + rng.normal(0, 6, body.shape), 0, 255).astype(np.uint8)
        files.append(tmp / f"gen{i}.png")
        Image.fromarray(img).save(files[-1])
    return files


def items_for(files: list[Path], n: int) -> list[SourceItem]:
    return [SourceItem(key=make_key("bench", f"i{i}"), image_path=str(files[i % len(files)]),
                       meta={"institution": "bench", "patient_id": str(i), "study_id": str(i), "view": "PA",
                             "split": "train"}) for i in range(n)]


def cpu_timed(fn, item):
    """(fn(item), CPU seconds this process spent on it): per-core speed that other load on a shared
    machine cannot depress (wall-clock figures are reported too)."""
    t = time.process_time()
    out = fn(item)
    return out, time.process_time() - t


def throughput(items: list[SourceItem], workers: int, image_size: int) -> dict:
    fn = partial(cpu_timed, partial(encode_record, image_size=image_size, label_space="none",
                                    institution="bench"))
    with worker_pool(workers) as pool:
        list(ordered_map(fn, items[: 4 * workers], pool, 2))  # warm-up: start processes, fill caches
        t = time.perf_counter()
        results = list(ordered_map(fn, items, pool, 8, max(8, 2 * workers)))
        wall = time.perf_counter() - t
    assert all(r[0] == "ok" for r, _ in results), [r for r, _ in results if r[0] != "ok"][:1]
    cpu = sum(c for _, c in results)
    return {"workers": workers, "images_per_s_wall": len(items) / wall,
            "images_per_s_per_core_wall": len(items) / wall / workers,
            "images_per_cpu_s": len(items) / cpu}


def stage_breakdown(files: list[Path], image_size: int, reps: int = 2) -> dict:
    """CPU milliseconds per image for each stage, single process."""
    t_dec = t_pyr = t_enc = 0.0
    n = 0
    for _ in range(reps):
        for f in files:
            t0 = time.process_time()
            px = load_image(f, min_side=image_size).pixels
            t1 = time.process_time()
            levels = make_pyramid(px, image_size)
            t2 = time.process_time()
            for lv in levels:
                encode_png(lv)
            t3 = time.process_time()
            t_dec, t_pyr, t_enc, n = t_dec + t1 - t0, t_pyr + t2 - t1, t_enc + t3 - t2, n + 1
    return {"decode_ms": 1e3 * t_dec / n, "pyramid_ms": 1e3 * t_pyr / n, "encode_ms": 1e3 * t_enc / n}


def pillow_reference(files: list[Path], image_size: int, reps: int = 2) -> dict:
    """The same stages done the pre-OpenCV way (Pillow decode, box-reduce + Lanczos, Pillow PNG at
    zlib 3): the 'before' column, measured in the same run and under the same load."""
    t_dec = t_pyr = t_enc = 0.0
    n = 0
    for _ in range(reps):
        for f in files:
            t0 = time.process_time()
            im = Image.open(f)
            im.load()
            im = im if im.mode == "L" else im.convert("L")
            t1 = time.process_time()
            top = im.resize((image_size, image_size), Image.Resampling.LANCZOS, reducing_gap=2.0)
            levels = [top] + [top.resize((s, s), Image.Resampling.LANCZOS, reducing_gap=2.0)
                              for s in (image_size // 2, image_size // 4)]
            t2 = time.process_time()
            for lv in levels:
                buf = io.BytesIO()
                lv.save(buf, format="PNG", compress_level=3, optimize=False)
            t3 = time.process_time()
            t_dec, t_pyr, t_enc, n = t_dec + t1 - t0, t_pyr + t2 - t1, t_enc + t3 - t2, n + 1
    return {"decode_ms": 1e3 * t_dec / n, "pyramid_ms": 1e3 * t_pyr / n, "encode_ms": 1e3 * t_enc / n}


def compress_levels(files: list[Path], image_size: int) -> list[dict]:
    levels = [make_pyramid(load_image(f).pixels, image_size) for f in files[:8]]
    out = []
    for lvl in (1, 3, 6, 9):
        t = time.process_time()
        pngs = [encode_png(im, lvl) for pyr in levels for im in pyr]
        t_enc, t = time.process_time() - t, time.process_time()
        for png in pngs:
            decode_gray8_png(png, *Image.open(io.BytesIO(png)).size)
        out.append({"compress_level": lvl, "encode_cpu_ms": 1e3 * t_enc / len(levels),
                    "decode_cpu_ms": 1e3 * (time.process_time() - t) / len(levels),
                    "kib_per_image": sum(map(len, pngs)) / len(levels) / 1024})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--generated", action="store_true", help="synthetic 1024 px PNGs, not the real ones")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/shard_bench.json"))
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        files = input_files(args.generated, Path(tmp))
        sizes = {Image.open(f).size for f in files}
        items = items_for(files, args.images)
        stages = stage_breakdown(files, args.image_size)
        before = pillow_reference(files, args.image_size)
        runs = [throughput(items, w, args.image_size) for w in args.workers]
        levels = compress_levels(files, args.image_size)
    result = {
        "inputs": "generated" if args.generated or not REAL.is_dir() else str(REAL),
        "input_sizes": sorted(sizes),
        "num_images": args.images, "image_size": args.image_size, "target_images_per_s_per_core": TARGET,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_avg_1m_at_end": os.getloadavg()[0]},
        "runs": runs, "stages_single_process_ms": stages,
        "stages_pillow_reference_ms": before, "png_compress_levels": levels,
        "note": "images_per_cpu_s = images per CPU-second of the worker processes (per-core speed, "
                "independent of other load); *_wall figures depend on how busy the shared machine was",
    }
    console = Console()
    t = Table(title=f"shard_bench: {args.images} x 1024 px PNG -> {args.image_size}/{args.image_size // 2}/"
                    f"{args.image_size // 4} pyramid ({os.cpu_count()} CPUs)")
    for col in ("workers", "images/s (wall)", "per core (wall)", "per core (CPU time)",
                f"target {TARGET:.0f}/core"):
        t.add_column(col, justify="right")
    for r in runs:
        t.add_row(str(r["workers"]), f"{r['images_per_s_wall']:.1f}",
                  f"{r['images_per_s_per_core_wall']:.1f}", f"{r['images_per_cpu_s']:.1f}",
                  "met" if r["images_per_cpu_s"] >= TARGET else "NOT met")
    console.print(t)
    console.print("CPU ms per image, 1 process: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    console.print("  same stages the Pillow way (before): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in before.items()))
    s = Table(title="PNG compress level (3 levels per image)")
    for col in ("level", "encode CPU ms", "decode CPU ms", "KiB/image"):
        s.add_column(col, justify="right")
    for lv in levels:
        s.add_row(str(lv["compress_level"]), f"{lv['encode_cpu_ms']:.2f}", f"{lv['decode_cpu_ms']:.2f}",
                  f"{lv['kib_per_image']:.1f}")
    console.print(s)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
