"""Image pyramid <-> sequences of flattened B x B patches, and each patch's position vector.

Patches are taken row by row (raster order), like ViT/MAE. A level of side s with block B has
(s/B)^2 patches; docs/method.md's table (1029 = 784 + 196 + 49 for ms_B8) follows from this.
"""

from __future__ import annotations

import torch

# x_scale = y_scale of each level, finest first (down, mid, up).
LEVEL_SCALES = (1.0, 0.5, 0.25)


def patchify(images: torch.Tensor, block: int) -> torch.Tensor:
    """Cut images into non-overlapping blocks.

    images: (B, s, s) -> patches: (B, N, block*block) with N = (s/block)^2, raster order.
    """
    b, h, w = images.shape
    if h % block or w % block:
        raise ValueError(f"image of {h}x{w} px is not divisible into {block}x{block} blocks")
    gh, gw = h // block, w // block
    x = images.reshape(b, gh, block, gw, block)
    return x.permute(0, 1, 3, 2, 4).reshape(b, gh * gw, block * block)


def unpatchify(patches: torch.Tensor, block: int) -> torch.Tensor:
    """Inverse of `patchify`: (B, N, block*block) -> (B, s, s) with s = sqrt(N) * block."""
    b, n, _ = patches.shape
    g = int(round(n ** 0.5))
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = patches.reshape(b, g, g, block, block).permute(0, 1, 3, 2, 4)
    return x.reshape(b, g * block, g * block)


def patch_positions(size: int, block: int, scale: float | None) -> torch.Tensor:
    """Position vector of each patch of one level (eq. 2's p), relative coordinates in [0, 1].

    Returns (N, 6) rows [x_start, y_start, x_end, y_end, x_scale, y_scale], or (N, 4) without
    the scale pair when `scale` is None (single-scale model).
    """
    g = size // block
    start = torch.arange(g, dtype=torch.float32) / g
    end = (torch.arange(g, dtype=torch.float32) + 1) / g
    ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    cols = [start[xs], start[ys], end[xs], end[ys]]
    if scale is not None:
        cols += [torch.full_like(cols[0], scale), torch.full_like(cols[0], scale)]
    return torch.stack(cols, dim=1)


def pyramid_positions(level_sizes: tuple[int, ...], block: int) -> list[torch.Tensor]:
    """Position vectors of every level, finest first: [(N_down, 6), (N_mid, 6), (N_up, 6)],
    or [(N, 4)] for a single level."""
    if len(level_sizes) == 1:
        return [patch_positions(level_sizes[0], block, None)]
    return [patch_positions(s, block, scale) for s, scale in zip(level_sizes, LEVEL_SCALES, strict=True)]
