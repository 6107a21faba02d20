"""How much of a synthetic radiograph's pixel variance do its findings carry, at each image size?

A pixel-regeneration objective (L_img) spends the model's capacity on whatever varies most between
images. This measures, by counterfactual rendering, how that variance splits: every record is drawn
twice from the same random streams, once as sampled and once with its findings removed (same
patient, anatomy, exposure and noise), and both are area-resized to each size. Per size:

    total      mean squared deviation of an image from the mean image (all variation)
    findings   mean squared difference between the image and its finding-free twin
    share      findings / total, over records with at least one finding

and per finding, over the records where it is present, the same difference against a twin that
lacks only that finding, and the share of pixels it moves by more than 4 grey levels. Run:

    python benchmarks/finding_signal.py --preset mimic-like --num 400 --sizes 32 64 224 \
        --out benchmarks/results/finding_signal.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from dataclasses import replace

import numpy as np

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.pyramid import square_resize
from mixvlp_ds.shard.synth.record import render_study, sample_study


def _pair(args: tuple[str, int, int, tuple[int, ...]]):
    preset, index, seed, sizes = args
    study = sample_study(preset, index, seed)
    def draw(findings: dict) -> dict[int, np.ndarray]:
        img = render_study(replace(study, findings=findings))
        return {s: square_resize(img, s).astype(np.float32) for s in sizes}

    full = draw(study.findings)
    twins = {name: draw({k: v for k, v in study.findings.items() if k != name}) for name in study.findings}
    none = draw({}) if len(study.findings) > 1 else next(iter(twins.values()), full)
    return full, none, twins


def measure(preset: str, num: int, sizes: list[int], seed: int = 0, workers: int = 1) -> dict:
    args = [(preset, i, seed, tuple(sizes)) for i in range(num)]
    if workers > 1:
        with mp.get_context("spawn").Pool(workers) as pool:
            rows = pool.map(_pair, args, chunksize=8)
    else:
        rows = [_pair(a) for a in args]
    out: dict = {"preset": preset, "num": num, "sizes": {}}
    has = np.array([bool(r[2]) for r in rows])   # r = (image, finding-free twin, {finding: twin})
    for s in sizes:
        imgs = np.stack([r[0][s] for r in rows])
        diff = np.stack([r[0][s] - r[1][s] for r in rows])
        total = float(((imgs - imgs.mean(0)) ** 2).mean())
        energy = (diff ** 2).mean(axis=(1, 2))                          # per record
        per = {}
        for name in CHEXPERT14:
            d = np.stack([r[0][s] - r[2][name][s] for r in rows if name in r[2]] or [np.zeros((s, s))])
            if any(name in r[2] for r in rows):
                per[name] = {"n": len(d), "msd": float((d ** 2).mean()),
                             "moved_pixels": float((np.abs(d) > 4).mean())}
        out["sizes"][str(s)] = {"total_var": total, "findings_msd": float(energy[has].mean()),
                                "share": float(energy[has].mean() / total), "per_finding": per}
    out["records_with_findings"] = int(has.sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="mimic-like")
    ap.add_argument("--num", type=int, default=400)
    ap.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 224])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="finding_signal.json")
    args = ap.parse_args()
    t0 = time.time()
    res = measure(args.preset, args.num, args.sizes, args.seed, args.workers)
    res["seconds"] = round(time.time() - t0, 1)
    print(f"{args.preset}: {args.num} records, {res['records_with_findings']} with findings, "
          f"{res['seconds']} s")
    print("| size | total pixel variance | finding MSD | share |\n|---|---|---|---|")
    for s, r in res["sizes"].items():
        print(f"| {s} | {r['total_var']:.0f} | {r['findings_msd']:.1f} | {r['share']:.3f} |")
    big = str(max(args.sizes))
    print(f"\nper finding at {big} px and {min(args.sizes)} px: n, MSD, share of pixels moved > 4 levels")
    small = str(min(args.sizes))
    for name, r in res["sizes"][big]["per_finding"].items():
        q = res["sizes"][small]["per_finding"][name]
        print(f"  {name:28s} n={r['n']:4d}  {r['msd']:7.1f} {r['moved_pixels']:.3f}   "
              f"{q['msd']:7.1f} {q['moved_pixels']:.3f}")
    with open(args.out, "w") as f:
        json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
