"""Regeneration: every finest-level patch of an unseen image predicted from a view in which it is masked.

The N finest-level patches are split into ceil(1 / 0.15) = 7 disjoint random groups of ~15%
(docs/method.md). Pass p masks group p (coarser levels intact, as `MixVLP.regenerate` takes a finest-
level mask) and keeps the predictions of exactly those patches; after 7 passes every patch has
been predicted once, from a view that did not contain it. MSE (0-255), PSNR (dB) and SSIM compare
the assembled image with the original; PNG grids show original | regenerated | |error|.

Two references that need no training, scored on the same images with the same masks:
  - coarse level upsampled: the half-resolution pyramid level, bilinearly upsampled. The model sees
    this level intact while it regenerates, so a model below it has not learnt to use it;
  - neighbour mean: each masked patch filled with the mean of its visible 8-neighbour patches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixvlp_ds.apps import metrics


def disjoint_masks(num_patches: int, ratio: float = 0.15, generator: torch.Generator | None = None,
                   ) -> torch.Tensor:
    """(P, N) bool: P = ceil(1/ratio) disjoint masks of ~ratio*N patches that cover all N."""
    passes = math.ceil(1.0 / ratio)
    order = torch.randperm(num_patches, generator=generator)
    masks = torch.zeros(passes, num_patches, dtype=torch.bool)
    for p, chunk in enumerate(order.tensor_split(passes)):
        masks[p, chunk] = True
    return masks


@torch.no_grad()
def regenerate_images(model, pyramid: list[torch.Tensor], ratio: float = 0.15, seed: int = 0,
                      input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                      ) -> np.ndarray:
    """uint8 pyramid of B images -> (B, S, S) uint8 regenerated images (every patch predicted masked).

    The same 7 masks are used for every image of the batch (drawn from `seed`); each pass's random
    replacement patches come from the other images of the batch, as in pre-training."""
    model.eval()
    b = pyramid[0].shape[0]
    n = model.cfg.patches_per_level()[0]
    side = model.cfg.image_size // model.cfg.block_size
    block = model.cfg.block_size
    gen = torch.Generator().manual_seed(seed)
    masks = disjoint_masks(n, ratio, gen)
    out = torch.zeros(b, model.cfg.image_size, model.cfg.image_size)
    for m in masks:
        pred = model.regenerate(pyramid, m[None].expand(b, n), generator=gen, input_ids=input_ids,
                                attention_mask=attention_mask).float().cpu()
        pix = m.view(side, side).repeat_interleave(block, 0).repeat_interleave(block, 1)
        out[:, pix] = pred[:, pix]
    return (out.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def image_metrics(original: np.ndarray, regenerated: np.ndarray) -> dict:
    """Per-image MSE/PSNR/SSIM lists and their means; (B, S, S) uint8 inputs."""
    mse = [metrics.mse_255(a, b) for a, b in zip(original, regenerated, strict=True)]
    psnr = [metrics.psnr(a, b) for a, b in zip(original, regenerated, strict=True)]
    ssim = [metrics.ssim(a, b) for a, b in zip(original, regenerated, strict=True)]
    finite = [p for p in psnr if math.isfinite(p)]
    return {"n": len(mse), "mse": float(np.mean(mse)), "psnr": float(np.mean(finite)) if finite else math.inf,
            "ssim": float(np.mean(ssim)), "per_image": {"mse": mse, "psnr": psnr, "ssim": ssim}}


def save_grid(original: np.ndarray, regenerated: np.ndarray, path: str | Path) -> Path:
    """One PNG: original | regenerated | |original - regenerated| side by side (uint8 grayscale)."""
    from PIL import Image

    err = np.abs(original.astype(np.int16) - regenerated.astype(np.int16)).astype(np.uint8)
    gap = np.full((original.shape[0], 4), 255, np.uint8)
    grid = np.concatenate([original, gap, regenerated, gap, err], axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid, mode="L").save(path)
    return path


# ----------------------------------------------------------------------------- references
def neighbour_mean(images: np.ndarray, masks: torch.Tensor, block: int) -> np.ndarray:
    """(B, S, S) uint8, (P, N) disjoint finest-level masks -> (B, S, S) uint8: every patch, in the
    pass that masks it, filled with the mean pixel of its visible 8-neighbour patches."""
    b, s, _ = images.shape
    side = s // block
    means = images.reshape(b, side, block, side, block).astype(np.float64).mean(axis=(2, 4))
    out = np.zeros((b, s, s))
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for m in masks:
        masked = m.view(side, side).numpy()
        visible = (~masked).astype(np.float64)
        vals = np.pad(means * visible, ((0, 0), (1, 1), (1, 1)))
        cnt = np.pad(visible, 1)
        total = sum(vals[:, 1 + dy:1 + dy + side, 1 + dx:1 + dx + side] for dy, dx in shifts)
        count = sum(cnt[1 + dy:1 + dy + side, 1 + dx:1 + dx + side] for dy, dx in shifts)
        # a patch whose 8 neighbours are all masked takes the mean of the visible patches
        fallback = (means * visible).sum(axis=(1, 2)) / max(visible.sum(), 1.0)
        fill = np.where(count > 0, total / np.maximum(count, 1.0), fallback[:, None, None])
        pix = np.kron(masked, np.ones((block, block), dtype=bool))
        out[:, pix] = np.kron(fill, np.ones((1, block, block)))[:, pix]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def coarse_upsampled(half: np.ndarray, size: int) -> np.ndarray:
    """(B, S/2, S/2) uint8 pyramid level -> (B, S, S) uint8, bilinear."""
    x = torch.from_numpy(half).float()[:, None]
    up = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return up.round().clamp(0, 255).to(torch.uint8).numpy()


def with_references(model, pyramids: list[list[np.ndarray]], seed: int = 0, batch_size: int = 16) -> dict:
    """The model and both references on the same images and masks: {"images": {original, model,
    coarse, neighbour: (n, S, S) uint8}, "rows": {name: image_metrics + model_better_share}}. Batch
    i uses seed + i for its masks (and the replacement patches), as `regenerate_images`."""
    cfg = model.cfg
    n = cfg.patches_per_level()[0]
    cols: dict[str, list[np.ndarray]] = {"original": [], "model": [], "coarse": [], "neighbour": []}
    for i in range(0, len(pyramids), batch_size):
        chunk = pyramids[i:i + batch_size]
        pyr = [torch.from_numpy(np.stack([p[level] for p in chunk])) for level in range(3)]
        masks = disjoint_masks(n, cfg.image_mask_ratio, torch.Generator().manual_seed(seed + i))
        cols["model"].append(regenerate_images(model, pyr, cfg.image_mask_ratio, seed + i))
        cols["original"].append(pyr[0].numpy())
        cols["coarse"].append(coarse_upsampled(pyr[1].numpy(), cfg.image_size))
        cols["neighbour"].append(neighbour_mean(pyr[0].numpy(), masks, cfg.block_size))
    arr = {k: np.concatenate(v) for k, v in cols.items()}
    rows = {name: image_metrics(arr["original"], arr[key])
            for name, key in [("model", "model"), ("coarse level upsampled", "coarse"),
                              ("neighbour mean", "neighbour")]}
    mse_model = np.array(rows["model"]["per_image"]["mse"])
    for r in rows.values():
        r["model_better_share"] = float(np.mean(mse_model < np.array(r["per_image"]["mse"])))
    return {"images": arr, "rows": rows}


def reference_table(rows: dict) -> str:
    lines = ["| regeneration | MSE (0-255) | PSNR (dB) | SSIM | model better (per-image MSE) |",
             "|---|---|---|---|---|"]
    for name, r in rows.items():
        better = "-" if name == "model" else f"{100 * r['model_better_share']:.0f}%"
        lines.append(f"| {name} | {r['mse']:.1f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {better} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class RegenOptions:
    """Which images eval_regen scores, how, and how many it draws."""

    num_images: int = 64      # the first N images of the split (in shard order)
    grids: int = 8            # PNG grids original | regenerated | |error| written, first images first
    batch_size: int = 16      # images per forward pass (the figures do not depend on it)
    seed: int = 0             # the disjoint patch masks' draw


def eval_regen(checkpoint: str, shards: str, split: str, out: Path,
               opts: RegenOptions = RegenOptions()) -> dict:
    """Regeneration metrics of one pre-trained model over the first `opts.num_images` images of a
    split, beside the two references (with_references) on the same images and masks: the model's
    numbers at the top level, the comparison in "rows" (with the images' keys)."""
    num_images, grids = opts.num_images, opts.grids
    import tempfile

    from mixvlp_ds.apps.rows import fetch_model_dir
    from mixvlp_ds.data.reader import iter_samples
    from mixvlp_ds.model import MixVLP

    with tempfile.TemporaryDirectory() as cache:
        model = MixVLP.from_pretrained(fetch_model_dir(checkpoint, Path(cache))).eval()
    if model.cfg.fusion == "unit":
        raise ValueError("regeneration of UNIT needs reports too; evaluate a UWOX / AIAYN-image model")
    size = model.cfg.image_size
    pyramids, keys = [], []
    for s in iter_samples(shards, split, image_size=size):
        if s["pyramid"] is not None:
            pyramids.append(s["pyramid"])
            keys.append(s["key"])
            if len(pyramids) >= num_images:
                break
    if not pyramids:
        raise ValueError(f"{shards}: split {split!r} has no images")
    both = with_references(model, pyramids, opts.seed, opts.batch_size)
    orig, regen = both["images"]["original"], both["images"]["model"]
    res = dict(both["rows"]["model"])
    name = f"{'ms' if model.cfg.multiscale else 'ss'}_B{model.cfg.block_size}"
    res.update(variant=name, patches=model.cfg.num_patches, checkpoint=checkpoint, image_size=size,
               block_size=model.cfg.block_size, keys=keys, rows=both["rows"], images=both["images"])
    res["grids"] = [str(save_grid(orig[k], regen[k], out / "grids" / name / f"{k:03d}.png"))
                    for k in range(min(grids, len(orig)))]
    return res
