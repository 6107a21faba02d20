"""Square crop and the 3-level image pyramid stored in every shard sample.

Square policy: resize so the *shorter* side is S, then center-crop the longer side to S. This is
what CXR pipelines (CheXpert, MIMIC-CXR, torchxrayvision) do: the lung fields are centred and
a non-square radiograph loses a little of its lateral or lower margin, never its aspect ratio,
and no artificial black bars are introduced. The centred square of side min(W, H) is cut out
(a view, no copy) and resampled once to S x S.

Antialiasing: a downscale is an area average (OpenCV `INTER_AREA`): every output pixel is the
mean of the input pixels its footprint covers, with fractional weights at the edges, so no
input frequency above the new Nyquist limit folds back as aliasing (a 1 px checkerboard becomes
uniform grey). While the square is more than 2x the target it is first reduced by the integer
factor k = side // (2S) (exact k x k means; the square is trimmed by side % k < k pixels, split
between both edges, so that k divides it), then area-resampled to S: for a 1024 px radiograph
a 2x2 mean to 512, then 512 -> 224, ~5x faster than Pillow's box-reduce + Lanczos and visually
the same. An image smaller than S is enlarged with Lanczos (Pillow). The
coarser levels S/2 and S/4 are exact 2x2 and 4x4 means of level S (a mip-map).

`encode_png` writes 8-bit grayscale PNG through OpenCV's libpng with fixed settings (zlib level
3, the Up filter on every row, run-length deflate strategy) and no metadata chunks, so the bytes
depend only on the pixels (and on the libpng/zlib build). Every training epoch decodes these
PNGs again, so the filter is chosen for decoding speed: Up unfilters ~1.7x faster than Paeth
(the costliest per byte) and, with Z_RLE, the files are ~10% smaller than Pillow's adaptive
filter at level 3 and ~2x faster to write (benchmarks/shard_bench.py).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from mixvlp_ds.shard.format import level_sizes

# zlib level 3 + Z_RLE + Up filter: measured in benchmarks/shard_bench.py (encode/decode ms, KiB).
PNG_COMPRESS_LEVEL = 3
_PNG_PARAMS = [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
               cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, upper, right, lower) of the centred square of side min(width, height)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def square_resize(img: np.ndarray | Image.Image, size: int) -> np.ndarray:
    """(H, W) uint8 (or a mode-L image) -> (size, size) uint8: shorter side to `size`, centre crop."""
    a = np.asarray(img)
    left, top, right, bottom = square_box(a.shape[1], a.shape[0])
    square = a[top:bottom, left:right]
    side = square.shape[0]
    if side == size:
        return np.array(square)
    if side > size:
        k = side // (2 * size)
        if k >= 2:  # exact k x k means first (OpenCV's fast integer path), as Pillow's reducing_gap=2
            trim = side % k
            square = square[trim // 2:side - (trim - trim // 2), trim // 2:side - (trim - trim // 2)]
            square = cv2.resize(square, (side // k, side // k), interpolation=cv2.INTER_AREA)
        return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    return np.asarray(Image.fromarray(np.ascontiguousarray(square), "L").resize(
        (size, size), Image.Resampling.LANCZOS))


def make_pyramid(pixels: np.ndarray, image_size: int) -> list[np.ndarray]:
    """pixels: (H, W) uint8 -> [(S, S), (S/2, S/2), (S/4, S/4)] uint8 arrays, finest first."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    fine, mid, coarse = level_sizes(image_size)
    top = square_resize(pixels, fine)
    return [top] + [cv2.resize(top, (s, s), interpolation=cv2.INTER_AREA) for s in (mid, coarse)]


def encode_png(arr: np.ndarray | Image.Image, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """(H, W) uint8 (or a mode-L image) -> deterministic 8-bit grayscale PNG bytes."""
    if isinstance(arr, Image.Image) and arr.mode != "L":
        raise ValueError(f"encode_png expects 8-bit grayscale, got mode {arr.mode}")
    a = np.asarray(arr)
    if a.ndim != 2 or a.dtype != np.uint8:
        raise ValueError(f"encode_png expects 8-bit grayscale (H, W) uint8, got {a.dtype} {a.shape}")
    ok, buf = cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, compress_level, *_PNG_PARAMS])
    if not ok:
        raise ValueError(f"PNG encoding failed for a {a.shape} image")
    return buf.tobytes()
