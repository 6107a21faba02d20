"""Drawing helpers: body-unit coordinates of an image, soft steps, and smooth random fields.

Everything is drawn in *body units*: `u` runs from the patient's right (image left, negative) to
the patient's left (image right, positive), `v` from head (negative) to feet; the lungs span about
|u| < 0.9 and -0.8 < v < 0.7. There is no in-plane rotation, so `u` is one row vector (1, W) and
`v` one column vector (H, 1): a shape's edge that depends on one coordinate is a 1-D computation,
and only the final comparison broadcasts to the image. This keeps a 512 px chest to a few tens
of whole-image numpy operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

F32 = np.float32


@dataclass
class Canvas:
    """Pixel grid <-> body units. u: (1, W), v: (H, 1), both float32; `px` = body units per pixel."""

    u: np.ndarray
    v: np.ndarray
    px: float

    @classmethod
    def make(cls, size: int, half_fov: float, shift_u: float = 0.0, shift_v: float = 0.0) -> Canvas:
        grid = ((np.arange(size, dtype=np.float64) + 0.5) / size * 2.0 - 1.0) * half_fov
        u = (grid + shift_u).astype(F32)[None, :]
        v = (grid + shift_v - 0.02).astype(F32)[:, None]
        return cls(u=u, v=v, px=2.0 * half_fov / size)

    @property
    def shape(self) -> tuple[int, int]:
        return self.v.shape[0], self.u.shape[1]

    def cols(self, lo: float, hi: float) -> slice:
        """Pixel columns whose u lies in [lo, hi] (possibly empty)."""
        return _span(self.u[0], lo, hi)

    def rows(self, lo: float, hi: float) -> slice:
        return _span(self.v[:, 0], lo, hi)

    def box(self, u0: float, u1: float, v0: float, v1: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
        """(row slice, col slice, u sub-row, v sub-column) of a body-unit rectangle."""
        rs, cs = self.rows(v0, v1), self.cols(u0, u1)
        return rs, cs, self.u[:, cs], self.v[rs, :]


def _span(axis: np.ndarray, lo: float, hi: float) -> slice:
    a = int(np.searchsorted(axis, lo, side="left"))
    b = int(np.searchsorted(axis, hi, side="right"))
    return slice(a, max(a, b))


def ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 for x < -width/2, 1 for x > width/2, linear between. In place when x is float32."""
    x = np.asarray(x, dtype=F32)
    out = x * F32(1.0 / width)
    out += F32(0.5)
    np.clip(out, 0.0, 1.0, out=out)
    return out


@lru_cache(maxsize=64)
def _upsampler(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) Gaussian interpolation weights: a smooth (C-infinity) upsampling of a coarse grid."""
    pos = (np.arange(n_out) + 0.5) / n_out * n_in - 0.5
    d = pos[:, None] - np.arange(n_in)[None, :]
    w = np.exp(-0.5 * (d / 0.75) ** 2)
    w[w < 1e-6] = 0.0  # float32 denormals would make the product ten times slower
    w /= w.sum(axis=1, keepdims=True)
    w = w.astype(F32)
    w.setflags(write=False)
    return w


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """A smooth zero-mean random field of unit-ish std with about `cells` blobs across, (H, W) float32.

    Coarse white noise upsampled by two small matrix products (Wy @ G @ Wx^T). BLAS splits a
    product over rows/columns, never over the summed axis, so the thread count cannot change a pixel.
    """
    h, w = shape
    g = rng.standard_normal((cells, cells), dtype=F32) * F32(1.6)
    return _upsampler(h, cells) @ g @ _upsampler(w, cells).T


def segment_distance(
    u: np.ndarray, v: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]
) -> np.ndarray:
    """Distance (body units) of each point of the (v, u) broadcast grid to the segment p0-p1 (u, v)."""
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(du * du + dv * dv, 1e-12)
    t = ((u - p0[0]) * du + (v - p0[1]) * dv) / length2
    np.clip(t, 0.0, 1.0, out=t)
    eu = u - (p0[0] + t * du)
    ev = v - (p0[1] + t * dv)
    return np.sqrt(eu * eu + ev * ev)
