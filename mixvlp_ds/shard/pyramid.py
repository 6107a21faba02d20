"""Square crop and the 3-level image pyramid stored in every shard sample.

Square policy: resize so the *shorter* side is S, then center-crop the longer side to S. This is
what CXR pipelines (CheXpert, MIMIC-CXR, torchxrayvision) do: the lung fields are centred and
a non-square radiograph loses a little of its lateral or lower margin, never its aspect ratio,
and no artificial black bars are introduced. Both steps are one `Image.resize(box=...)` call
(the centred square of side min(W, H) is resampled to S x S), so pixels are touched once.

Antialiasing: LANCZOS, preceded by PIL's integer `reduce` (box average) while the image is more
than 2x larger than the target (`reducing_gap=2.0`): a 1024 px radiograph is box-reduced to 512
and then Lanczos-resampled to 224, which is indistinguishable from a direct Lanczos resize and
several times faster. The coarser levels (S/2, S/4) are Lanczos resizes of level S.

`encode_png` writes 8-bit grayscale PNG with a fixed zlib level and no metadata chunks, so the
bytes depend only on the pixels (and on the zlib build): re-runs are byte-identical.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from mixvlp_ds.shard.format import level_sizes

# zlib level: ~2x faster than 6 at 224 px for ~10% more bytes (benchmarks/shard_bench.py).
PNG_COMPRESS_LEVEL = 3


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """(left, upper, right, lower) of the centred square of side min(width, height)."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then center crop: an antialiased (size, size) image."""
    if img.size == (size, size):
        return img.copy()
    return img.resize((size, size), Image.Resampling.LANCZOS, box=square_box(*img.size), reducing_gap=2.0)


def pyramid_images(img: Image.Image, image_size: int) -> list[Image.Image]:
    """A mode-L PIL image -> [S, S/2, S/4] square mode-L images, finest first."""
    fine, mid, coarse = level_sizes(image_size)
    top = square_resize(img, fine)
    return [top] + [top.resize((s, s), Image.Resampling.LANCZOS, reducing_gap=2.0) for s in (mid, coarse)]


def make_pyramid(pixels: np.ndarray, image_size: int) -> list[np.ndarray]:
    """pixels: (H, W) uint8 -> [(S, S), (S/2, S/2), (S/4, S/4)] uint8 arrays, finest first."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (H, W) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    return [np.asarray(im) for im in pyramid_images(Image.fromarray(pixels, "L"), image_size)]


def encode_png(arr: np.ndarray | Image.Image, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """(H, W) uint8 (or a mode-L image) -> deterministic 8-bit grayscale PNG bytes."""
    im = arr if isinstance(arr, Image.Image) else Image.fromarray(np.ascontiguousarray(arr), "L")
    if im.mode != "L":
        raise ValueError(f"encode_png expects 8-bit grayscale, got mode {im.mode}")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level, optimize=False)
    return buf.getvalue()
