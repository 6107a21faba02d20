"""Is the synthetic data learnable but not trivial, and is text easier than images?

Draws `--train` + `--test` mimic-like records (and/or another preset), then per CheXpert finding:

* pixels-LR: logistic regression on 32x32 downsampled pixels;
* hog-LR:    logistic regression on HOG features of 128x128 images (scikit-image);
* cnn:       a tiny 4-layer CNN on 64x64 images, trained for `--cnn-steps` batches of 64 on the CPU;
* text-LR:   TF-IDF (1-2 grams) + logistic regression on the report text.

AUC policy: positive = label 1, negative = 0 or not mentioned; uncertain (-1) records are left out
of that finding's training and scoring. A finding with fewer than 5 positives or negatives in the
test set is reported as n/a. Also measures generation speed (images/s on one core, per preset).

    python benchmarks/synthetic_probe.py --train 2000 --test 500 --out synthetic_probe.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np
from PIL import Image

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.synth.record import make_record, render_image

SIZES = {"pix": 32, "hog": 128, "cnn": 64}


def _draw(args: tuple[str, int, int]) -> tuple[dict[str, np.ndarray], str | None, list[int | None]]:
    preset, index, seed = args
    img, text, labels, _ = make_record(preset, index, seed)
    pil = Image.fromarray(img)
    views = {k: np.asarray(pil.resize((s, s), Image.BILINEAR, reducing_gap=2.0)) for k, s in SIZES.items()}
    return views, text, [labels[n] for n in CHEXPERT14]


def draw_dataset(preset: str, start: int, n: int, seed: int, workers: int):
    with mp.get_context("fork").Pool(workers) as pool:
        rows = pool.map(_draw, [(preset, i, seed) for i in range(start, start + n)], chunksize=16)
    views = {k: np.stack([r[0][k] for r in rows]) for k in SIZES}
    texts = [r[1] or "" for r in rows]
    labels = np.array([[np.nan if v is None else v for v in r[2]] for r in rows], dtype=float)
    return views, texts, labels


def _targets(labels: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask of usable records, 0/1 target) for finding j under the AUC policy above."""
    col = labels[:, j]
    return col != -1, (col == 1).astype(int)


def auc_table(scores: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for j, name in enumerate(CHEXPERT14):
        keep, y = _targets(labels, j)
        yk = y[keep]
        out[name] = (
            None if min(yk.sum(), len(yk) - yk.sum()) < 5 else float(roc_auc_score(yk, scores[keep, j]))
        )
    return out


def linear_probe(xtr, ytr, xte, C: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(xtr)
    xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    scores = np.zeros((len(xte), len(CHEXPERT14)))
    for j in range(len(CHEXPERT14)):
        keep, y = _targets(ytr, j)
        if y[keep].min() == y[keep].max():
            continue
        clf = LogisticRegression(C=C, max_iter=300).fit(xtr[keep], y[keep])
        scores[:, j] = clf.decision_function(xte)
    return scores


def hog_features(images: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    return np.stack(
        [hog(im, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2)) for im in images]
    )


def text_probe(ttr, ytr, tte) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2)
    xtr, xte = vec.fit_transform(ttr), vec.transform(tte)
    scores = np.zeros((len(tte), len(CHEXPERT14)))
    for j in range(len(CHEXPERT14)):
        keep, y = _targets(ytr, j)
        if y[keep].min() == y[keep].max():
            continue
        scores[:, j] = (
            LogisticRegression(C=10.0, max_iter=1000).fit(xtr[keep], y[keep]).decision_function(xte)
        )
    return scores


def cnn_probe(xtr, ytr, xte, steps: int, seed: int) -> tuple[np.ndarray, float]:
    """A tiny CNN, multi-label BCE with uncertain labels masked out; returns (scores, seconds)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    net = nn.Sequential(
        *block(1, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 48),
        nn.MaxPool2d(2),
        *block(48, 64),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, len(CHEXPERT14)),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    x = torch.from_numpy(xtr).float().unsqueeze(1) / 255.0
    y = torch.from_numpy(np.nan_to_num(ytr, nan=0.0)).float()
    mask = (y != -1).float()
    y = (y == 1).float()
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    net.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=gen)
        shift = int(torch.randint(-3, 4, (1,), generator=gen))  # small shifts: no pixel-exact shortcuts
        xb = torch.roll(x[idx], shifts=(shift,), dims=(3,))
        loss = nn.functional.binary_cross_entropy_with_logits(net(xb), y[idx], reduction="none") * mask[idx]
        loss = loss.sum() / mask[idx].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    net.eval()
    with torch.no_grad():
        out = net(torch.from_numpy(xte).float().unsqueeze(1) / 255.0).numpy()
    return out, seconds


def speed(presets: list[str], n: int) -> dict[str, float]:
    out = {}
    for p in presets:
        render_image(p, 0)
        t = time.process_time()  # CPU time of this process: fair on a shared machine
        for i in range(n):
            render_image(p, i)
        out[p] = n / (time.process_time() - t)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mimic-like")
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cnn-steps", type=int, default=800, help="CNN training batches of 64")
    ap.add_argument(
        "--speed-images", type=int, default=100, help="images per preset for the speed check (0: skip)"
    )
    ap.add_argument("--out", default="synthetic_probe.json")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    vtr, ttr, ytr = draw_dataset(args.preset, 0, args.train, args.seed, args.workers)
    vte, tte, yte = draw_dataset(args.preset, args.train, args.test, args.seed, args.workers)
    gen_s = time.perf_counter() - t0
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    results = {
        "pixels-LR": auc_table(linear_probe(flat(vtr["pix"]), ytr, flat(vte["pix"]), C=0.01), yte),
        "hog-LR": auc_table(
            linear_probe(hog_features(vtr["hog"]), ytr, hog_features(vte["hog"]), C=0.01), yte
        ),
    }
    cnn_scores, cnn_seconds = cnn_probe(vtr["cnn"], ytr, vte["cnn"], args.cnn_steps, args.seed)
    results["cnn"] = auc_table(cnn_scores, yte)
    if any(ttr):
        results["text-LR"] = auc_table(text_probe(ttr, ytr, tte), yte)

    header = f"{'finding':28s}" + "".join(f"{m:>11s}" for m in results) + f"{'test pos':>10s}"
    print(header)
    for j, name in enumerate(CHEXPERT14):
        cells = "".join(f"{'n/a' if r[name] is None else f'{r[name]:.3f}':>11s}" for r in results.values())
        print(f"{name:28s}{cells}{int((yte[:, j] == 1).sum()):>10d}")
    means = {m: float(np.mean([v for v in r.values() if v is not None])) for m, r in results.items()}
    print(f"{'mean AUC':28s}" + "".join(f"{means[m]:>11.3f}" for m in results))
    rates = speed(["mimic-like", "nih-like", "openi-like"], args.speed_images) if args.speed_images else {}
    for p, r in rates.items():
        print(f"generation speed {p:11s} {r:7.1f} images per CPU-second (one core)")
    report = {
        "preset": args.preset,
        "train": args.train,
        "test": args.test,
        "seed": args.seed,
        "cnn_steps": args.cnn_steps,
        "cnn_seconds": cnn_seconds,
        "generate_seconds": gen_s,
        "auc": results,
        "mean_auc": means,
        "images_per_second": rates,
    }
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
