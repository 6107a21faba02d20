"""Regeneration: every finest-level patch of an unseen image predicted from a view in which it is masked.

The N finest-level patches are split into ceil(1 / 0.15) = 7 disjoint random groups of ~15%
(METHOD.md). Pass p masks group p (coarser levels intact, as `MixVLP.regenerate` takes a finest-
level mask) and keeps the predictions of exactly those patches; after 7 passes every patch has
been predicted once, from a view that did not contain it. MSE (0-255), PSNR (dB) and SSIM compare
the assembled image with the original; PNG grids show original | regenerated | |error|.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

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
