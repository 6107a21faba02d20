"""From attenuation to an 8-bit radiograph, the way one institution's machines do it.

Each image draws its own exposure, contrast, gamma, brightness, detector noise and field of view
from the preset's ranges (institutions.Acquisition), shifted by a small offset fixed per
institution name, so two institutions with the same preset still look a little different.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from mixvlp_ds.shard.synth.canvas import F32, Canvas
from mixvlp_ds.shard.synth.institutions import Acquisition


@dataclass(frozen=True)
class Exposure:
    """One image's acquisition settings."""

    size: int
    half_fov: float
    shift_u: float
    shift_v: float
    exposure: float
    contrast: float
    gamma: float
    brightness: float
    noise: float
    marker: str | None  # "L" or "R" burnt into a corner, or None


def institution_offset(institution: str) -> float:
    """A stable number in [-1, 1] per institution name (crc32, not Python's salted hash)."""
    return (zlib.crc32(institution.encode("utf-8")) % 2001) / 1000.0 - 1.0


def sample_exposure(rng: np.random.Generator, acq: Acquisition, institution: str) -> Exposure:
    off = institution_offset(institution)

    def draw(lo_hi: tuple[float, float], jitter: float = 0.0) -> float:
        lo, hi = lo_hi
        return float(lo + (hi - lo) * rng.random() + jitter * off * (hi - lo))

    size = int(acq.sizes[int(rng.integers(len(acq.sizes)))])
    return Exposure(
        size=size,
        half_fov=draw(acq.fov),
        shift_u=acq.shift * (2 * rng.random() - 1),
        shift_v=acq.shift * (2 * rng.random() - 1),
        exposure=draw(acq.exposure, 0.3),
        contrast=draw(acq.contrast, 0.3),
        gamma=draw(acq.gamma, 0.3),
        brightness=draw(acq.brightness),
        noise=draw(acq.noise),
        marker=("L" if rng.random() < 0.5 else "R") if acq.marker else None,
    )


_LUT_LO, _LUT_HI, _LUT_N = -0.5, 3.0, 4096


def film_curve(exp: Exposure) -> np.ndarray:
    """Lookup table: attenuation bin -> grey level 0..255 (film response, contrast, gamma)."""
    a = np.linspace(_LUT_LO, _LUT_HI, _LUT_N)
    sat = 1.0 - np.exp(-1.2 * 1.6)  # soft tissue (A ~ 1) lands near 0.8, bone and metal above
    grey = (1.0 - np.exp(-1.2 * exp.exposure * np.clip(a, 0.0, None))) / sat
    grey = (grey - 0.5) * exp.contrast + 0.5 + exp.brightness
    grey = np.clip(grey, 0.0, 1.0) ** exp.gamma
    return (grey * 255.0 + 0.5).astype(F32)  # + 0.5: the final cast to uint8 then rounds


def develop(A: np.ndarray, exp: Exposure, rng: np.random.Generator) -> np.ndarray:
    """Attenuation (H, W) -> uint8 radiograph (H, W): film curve, detector noise, side marker.
    A is overwritten.

    The film curve is a 4096-entry lookup table (one pass instead of exp + pow over the image); the
    noise is triangular (sum of two random bytes): cheap, and it looks Gaussian.
    """
    idx = A  # A is consumed: reuse its memory
    idx -= F32(_LUT_LO)
    idx *= F32((_LUT_N - 1) / (_LUT_HI - _LUT_LO))
    np.clip(idx, 0, _LUT_N - 1, out=idx)
    img = film_curve(exp).take(idx.astype(np.int32))
    if exp.marker:
        _marker(img, exp.marker)
    # Triangular noise: two random bytes summed (std ~104.5 grey levels before scaling), streamed
    # through the image in order (a table gather would thrash the cache); centred on zero.
    n = img.size
    raw = np.frombuffer(rng.bytes(2 * n), dtype=np.uint8)
    scale = F32(exp.noise * 255.0 / 104.5)
    noise = raw[:n].astype(F32)
    noise += raw[n:].astype(F32)
    noise *= scale
    img += noise.reshape(img.shape)
    img -= F32(255.0) * scale
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


# 5x3 block letters for the side marker technologists put on the cassette.
_GLYPHS = {"L": ("100", "100", "100", "100", "111"), "R": ("110", "101", "110", "101", "101")}


def _marker(img: np.ndarray, letter: str) -> None:
    h, w = img.shape
    cell = max(2, w // 100)
    glyph = np.array([[c == "1" for c in row] for row in _GLYPHS[letter]])
    block = np.kron(glyph, np.ones((cell, cell), bool))
    y0, x0 = h // 12, (w - w // 12 - block.shape[1]) if letter == "L" else w // 12
    img[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]][block] = 242.0


def canvas_for(exp: Exposure) -> Canvas:
    return Canvas.make(exp.size, exp.half_fov, exp.shift_u, exp.shift_v)
