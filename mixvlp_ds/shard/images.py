"""Decode one chest radiograph file into 8-bit grayscale pixels.

Conversions (each one is what a radiologist would call the same image, in 8 bits):

- 8-bit grayscale PNG/JPEG: used as is.
- 16-bit (and 32-bit integer) grayscale PNG/TIFF: linear min-max over the image's *own* range
  (`(v - min) / (max - min) * 255`, rounded). CXR PNGs often hold 10-14 significant bits in a
  16-bit container, so dividing by 65535 would give a nearly black image; the real range keeps
  the full contrast. A constant image maps to 0. `orig_bit_depth` records 16.
- RGB / YCbCr / CMYK (JPEG, including Adobe-inverted CMYK): ITU-R 601 luma (`PIL convert("L")`
  after conversion to RGB). Radiographs saved in colour carry the same value in every channel.
- RGBA / LA / palette with transparency: composited on black (luma x alpha / 255). The RGBA
  radiographs in ChestX-ray14 are fully opaque, so this equals dropping alpha there.
- Palette (P) and 1-bit: expanded through the palette to luma.
- DICOM (pydicom): Modality LUT (Rescale Slope / Intercept), then the VOI window (first
  WindowCenter / WindowWidth, DICOM PS3.3 C.11.2.1.2 linear function) when present, else
  min-max; MONOCHROME1 (white = low values) is inverted so that bone is always bright.
  Multi-frame objects use the first frame. `orig_bit_depth` is BitsStored. Only the LINEAR VOI
  function is implemented; a VOI LUT Sequence without a window falls back to min-max.

A truncated or unreadable file raises `ImageDecodeError` naming the file and the reason: PIL's
`ImageFile.LOAD_TRUNCATED_IMAGES` is forced off while decoding (the global is restored after),
and every image is fully decoded with `.load()` so a cut-off file cannot pass as a grey band.

Speed: an 8-bit grayscale PNG (the common CXR file) has its pixels inflated by OpenCV's libpng
(`cv2.imdecode`), about 1.3x faster than Pillow's decoder and pixel-identical (PNG is lossless;
tests compare the two). Pillow still parses the header, so every check and every other format,
bit depth and colour type stays on the Pillow path; a file without its final IEND chunk (cut
off) or anything OpenCV does not decode to the expected (H, W) uint8 array also goes through
Pillow, so truncated and corrupt files are classified exactly as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the last 12 bytes of every complete PNG file


class ImageDecodeError(Exception):
    """A file that cannot be turned into a radiograph. `reason` is a short category."""

    def __init__(self, file: str, reason: str, detail: str = ""):
        self.file, self.reason, self.detail = str(file), reason, detail
        super().__init__(f"{file}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class LoadedImage:
    """pixels: (H, W) uint8, the decoded radiograph; the rest describes the original file."""

    pixels: np.ndarray
    orig_width: int
    orig_height: int
    orig_bit_depth: int
    source_sha1: str | None


def load_image(path: str | os.PathLike, min_side: int | None = None) -> LoadedImage:
    """Decode `path` (PNG, JPEG, TIFF, BMP, DICOM...) to 8-bit grayscale.

    min_side: when set, a JPEG may be decoded at a reduced DCT scale (PIL `draft`) as long as its
    shorter side stays >= 2 * min_side, which keeps enough pixels for an antialiased resize to
    `min_side` and makes large JPEGs several times faster. orig_width/height are always the
    full-resolution size.
    """
    path = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as e:
        raise ImageDecodeError(path, "missing_file", "no such file") from e
    except OSError as e:
        raise ImageDecodeError(path, "unreadable_file", f"{type(e).__name__}: {e.strerror or e}") from e
    if not data:
        raise ImageDecodeError(path, "empty_file")
    sha1 = hashlib.sha1(data).hexdigest()
    if path.lower().endswith(_DICOM_SUFFIXES) or data[128:132] == b"DICM":
        pixels, w, h, depth = _decode_dicom(data, path)
    else:
        pixels, w, h, depth = _decode_pil(data, path, min_side)
    return LoadedImage(pixels, w, h, depth, sha1)


@contextlib.contextmanager
def _strict_truncation():
    """Force PIL to raise on truncated files, whatever another library set globally."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode_pil(data: bytes, path: str, min_side: int | None) -> tuple[np.ndarray, int, int, int]:
    with _strict_truncation():
        try:
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            depth = _bit_depth(im, data)
            if min_side and im.format == "JPEG" and im.mode in ("L", "RGB", "YCbCr", "CMYK"):
                # draft picks the smallest DCT scale >= the requested size.
                scale = min(w, h) / (2 * min_side)
                if scale >= 2:
                    im.draft(im.mode, (int(w / scale) + 1, int(h / scale) + 1))
            plain_gray_png = im.format == "PNG" and im.mode == "L" and not getattr(im, "is_animated", False)
            fast = decode_gray8_png(data, w, h) if plain_gray_png else None
            if fast is not None:
                return fast, w, h, depth
            im.load()
        except UnidentifiedImageError as e:  # its message holds a memory address: keep rejects reproducible
            raise ImageDecodeError(path, "not_an_image", "no image format recognised (PIL)") from e
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ImageDecodeError(path, _reason(e), f"{type(e).__name__}: {e}") from e
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
    return to_gray8(im, path), w, h, depth


def decode_gray8_png(data: bytes, width: int, height: int) -> np.ndarray | None:
    """Pixels of a complete 8-bit grayscale PNG through OpenCV, or None (use Pillow instead).

    None for any other bit depth / colour type (IHDR bytes 24-25), a file that does not end with
    IEND (cut off: Pillow names the problem), or a result that is not (height, width) uint8."""
    if data[24:26] != b"\x08\x00" or not data.endswith(_PNG_IEND):
        return None
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.shape != (height, width) or arr.dtype != np.uint8:
        return None
    return arr


def _reason(e: Exception) -> str:
    msg = str(e).lower()
    if "truncated" in msg or "broken data stream" in msg or "premature end" in msg:
        return "truncated_image"
    return "undecodable_image"


def _bit_depth(im: Image.Image, data: bytes) -> int:
    """Bits per sample of the stored file (PNG: the IHDR byte; else from PIL's mode)."""
    if im.format == "PNG" and data[12:16] == b"IHDR":
        return int(data[24])
    return {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(im.mode, 8)


def to_gray8(im: Image.Image, path: str = "<array>") -> np.ndarray:
    """Any PIL mode -> (H, W) uint8 grayscale, by the rules in the module docstring."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im)
    if mode.startswith("I") or mode == "F":
        return rescale_to_uint8(np.asarray(im))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        gray = np.asarray(im.convert("L"), dtype=np.uint16)
        alpha = np.asarray(im.getchannel("A"), dtype=np.uint16)
        return ((gray * alpha + 127) // 255).astype(np.uint8)  # composite on black
    if mode in ("1", "RGB", "YCbCr", "CMYK", "LAB", "HSV", "RGBX"):
        return np.asarray(im.convert("RGB").convert("L") if mode not in ("1", "RGB") else im.convert("L"))
    raise ImageDecodeError(path, "unsupported_mode", f"PIL mode {mode!r}")


def rescale_to_uint8(a: np.ndarray) -> np.ndarray:
    """Linear min-max of a numeric array to [0, 255] uint8 (constant -> 0). NaNs become 0."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def array_to_gray8(a: np.ndarray) -> np.ndarray:
    """A source's in-memory image (from `image_fn`) -> (H, W) uint8.

    uint8 is used as is; floats in [0, 1] are scaled by 255; other integer or float arrays are
    min-max rescaled; (H, W, 3|4) arrays go through `to_gray8` (luma, alpha on black)."""
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (3, 4) and a.dtype == np.uint8:
        return to_gray8(Image.fromarray(a, "RGB" if a.shape[2] == 3 else "RGBA"))
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3|4) image array, got shape {a.shape}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype.kind == "f" and a.size and 0.0 <= float(a.min()) and float(a.max()) <= 1.0:
        return np.rint(a * 255.0).astype(np.uint8)
    return rescale_to_uint8(a)


def _decode_dicom(data: bytes, path: str) -> tuple[np.ndarray, int, int, int]:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types: missing pixel data, no decoder, bad length
        raise ImageDecodeError(path, "undecodable_dicom", f"{type(e).__name__}: {e}") from e
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:  # colour DICOM (pydicom converts YBR to RGB): luma
        arr = arr[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    h, w = arr.shape[:2]
    depth = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 0) or arr.dtype.itemsize * 8)
    pixels = window_dicom(arr, ds)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels
    return pixels, int(w), int(h), depth


def _first(value) -> float | None:
    """WindowCenter/Width may be multi-valued (several windows): the first is the default one."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def window_dicom(arr: np.ndarray, ds) -> np.ndarray:
    """Stored values -> modality values (slope, intercept) -> 8 bits by the VOI window, else min-max."""
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    x = arr.astype(np.float64) * slope + intercept
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or width < 1:
        return rescale_to_uint8(x)
    # DICOM PS3.3 C.11.2.1.2.1, linear VOI function, output range [0, 255].
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0 if width > 1 else (x > center - 0.5) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)
