"""Decoding every kind of input radiograph to 8-bit grayscale (real test files too: docs/test_data.md)."""

import hashlib

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from shard_testkit import cmyk_jpeg, cxr_like, palette_png, png16, rgba_png, truncated_jpeg, truncated_png

from mixvlp_ds.shard.images import ImageDecodeError, array_to_gray8, load_image, rescale_to_uint8, to_gray8

TXV = "samples_original/torchxrayvision_tests"
DICOM = f"{TXV}/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def test_8bit_png_is_exact_and_sha1_is_of_the_file(tmp_path):
    a = cxr_like(1, 50, 60)
    p = tmp_path / "a.png"
    Image.fromarray(a).save(p)
    img = load_image(p)
    assert img.pixels.dtype == np.uint8 and np.array_equal(img.pixels, a)
    assert (img.orig_width, img.orig_height, img.orig_bit_depth) == (60, 50, 8)
    assert img.source_sha1 == hashlib.sha1(p.read_bytes()).hexdigest()


def test_16bit_png_uses_its_real_range(tmp_path):
    img = load_image(png16(tmp_path / "a.png", lo=1000, hi=5000))
    assert img.orig_bit_depth == 16
    assert img.pixels.dtype == np.uint8
    assert img.pixels.min() == 0 and img.pixels.max() == 255  # 1000..5000 stretched, not /65535
    flat = img.pixels.ravel()
    assert np.all(np.diff(flat.astype(int)) >= 0)  # monotone ramp stays monotone


def test_real_rgba_nih_png_is_composited_to_its_gray(shared_data):
    path = shared_data / "nih_cxr14/images_original/00000100_000.png"
    src = Image.open(path)
    assert src.mode == "RGBA"
    img = load_image(path)
    assert img.pixels.shape == (1024, 1024) and img.orig_bit_depth == 8
    # Opaque, gray-valued RGBA: compositing on black equals the gray channel.
    assert np.array_equal(img.pixels, np.asarray(src)[..., 0])


def test_rgba_transparent_pixels_composite_on_black(tmp_path):
    img = load_image(rgba_png(tmp_path / "a.png"))
    assert np.all(img.pixels[:, :24] == 0)
    assert np.all(img.pixels[:, 24:] == 200)


def test_real_rgb_jpeg_is_luma(shared_data):
    path = shared_data / TXV / "16747_3_1.jpg"
    img = load_image(path)
    assert img.pixels.shape == (885, 1036)
    assert np.array_equal(img.pixels, np.asarray(Image.open(path).convert("L")))


def test_cmyk_jpeg(tmp_path):
    img = load_image(cmyk_jpeg(tmp_path / "a.jpg", k=100))
    assert img.pixels.shape == (40, 48)
    assert abs(float(img.pixels.mean()) - (255 - 100)) < 4  # black ink 100 -> gray ~155


def test_grayscale_jpeg_and_palette_png(tmp_path):
    a = cxr_like(2, 64, 64)
    Image.fromarray(a).save(tmp_path / "g.jpg", quality=95)
    g = load_image(tmp_path / "g.jpg")
    assert g.pixels.shape == (64, 64) and np.abs(g.pixels.astype(int) - a).mean() < 4
    p = load_image(palette_png(tmp_path / "p.png", 40, 48))
    assert np.array_equal(p.pixels, np.asarray(Image.open(tmp_path / "p.png").convert("L")))


def test_large_jpeg_draft_keeps_original_size(shared_data):
    path = shared_data / TXV / "covid-19-pneumonia-58-prior.jpg"
    img = load_image(path, min_side=224)
    assert (img.orig_width, img.orig_height) == (2373, 2373)
    assert 448 <= min(img.pixels.shape) < 2373  # reduced DCT decode, still >= 2x the target


def test_real_dicom(shared_data):
    path = shared_data / DICOM
    ds = pydicom.dcmread(path)
    img = load_image(path)
    assert img.pixels.shape == (1024, 1024) and img.orig_bit_depth == int(ds.BitsStored)
    assert "WindowCenter" not in ds and ds.PhotometricInterpretation == "MONOCHROME2"
    assert np.array_equal(img.pixels, rescale_to_uint8(ds.pixel_array))  # no window: min-max


def _dicom(path, arr, photometric="MONOCHROME2", **attrs):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_monochrome1_rescale_and_window(tmp_path):
    arr = np.array([[0, 100, 200, 300], [400, 500, 600, 4095]], np.uint16)
    # modality value = 2 * stored - 100; window center 500, width 401 -> [300, 700] maps to 0..255
    path = _dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1", RescaleSlope="2", RescaleIntercept="-100",
                  WindowCenter="500", WindowWidth="401")
    img = load_image(path)
    x = arr.astype(float) * 2 - 100
    y = np.clip(((x - 499.5) / 400 + 0.5) * 255, 0, 255)
    assert np.array_equal(img.pixels, 255 - np.rint(y).astype(np.uint8))
    assert img.pixels[0, 0] == 255 and img.pixels[1, 3] == 0  # low values are white in MONOCHROME1
    assert img.orig_bit_depth == 12


def test_dicom_without_window_is_min_max(tmp_path):
    arr = np.array([[100, 200], [300, 1100]], np.uint16)
    img = load_image(_dicom(tmp_path / "m2.dcm", arr))
    assert img.pixels.tolist() == [[0, 26], [51, 255]]


@pytest.mark.parametrize("make,name", [(truncated_png, "t.png"), (truncated_jpeg, "t.jpg")])
def test_truncated_files_raise_even_if_pil_is_told_to_tolerate_them(tmp_path, make, name, monkeypatch):
    path = make(tmp_path / name)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageDecodeError) as e:
        load_image(path)
    assert e.value.reason == "truncated_image" and str(path) in str(e.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is restored


def test_unreadable_inputs_name_file_and_reason(tmp_path):
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 50)
    cases = {"garbage.png": "not_an_image", "empty.png": "empty_file", "missing.png": "missing_file",
             "bad.dcm": "undecodable_dicom"}
    for name, reason in cases.items():
        with pytest.raises(ImageDecodeError) as e:
            load_image(tmp_path / name)
        assert e.value.reason == reason, (name, e.value)
        assert name in str(e.value)


def test_array_to_gray8_conversions():
    assert array_to_gray8(np.full((2, 3), 7, np.uint8)).tolist() == [[7] * 3] * 2
    assert array_to_gray8(np.array([[0.0, 0.5, 1.0]])).tolist() == [[0, 128, 255]]
    assert array_to_gray8(np.array([[10, 20, 30]], np.uint16)).tolist() == [[0, 128, 255]]
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 1] = 255
    assert array_to_gray8(rgb).tolist() == [[150, 150]] * 2  # luma of pure green
    with pytest.raises(ValueError):
        array_to_gray8(np.zeros((2, 2, 2, 2)))


def _pillow_pixels(path) -> np.ndarray:
    im = Image.open(path)
    im.load()
    return np.asarray(im)


def test_fast_png_decoder_matches_pillow_on_real_and_unusual_files(tmp_path, shared_data, monkeypatch):
    """The OpenCV path for 8-bit grayscale PNG gives Pillow's pixels exactly, and is really taken."""
    import mixvlp_ds.shard.images as images

    taken = []
    real_fast = images.decode_gray8_png
    monkeypatch.setattr(images, "decode_gray8_png", lambda *a: taken.append(1) or real_fast(*a))
    files = sorted((shared_data / "nih_cxr14/images_original").glob("*.png"))[:6]
    a = cxr_like(3, 70, 90)
    Image.fromarray(a).save(tmp_path / "interlaced.png", interlace=1)  # Adam7
    Image.fromarray(a).save(tmp_path / "trns.png", transparency=7)  # gray tRNS: Pillow keeps mode L
    Image.fromarray(a).save(tmp_path / "level9.png", compress_level=9)
    files += [tmp_path / n for n in ("interlaced.png", "trns.png", "level9.png")]
    for f in files:
        ref = _pillow_pixels(f)
        if ref.ndim != 2:
            ref = to_gray8(Image.open(f))  # the RGBA file: Pillow path
        assert np.array_equal(load_image(f).pixels, ref), f
    assert len(taken) >= 6


def test_corrupt_png_with_intact_end_keeps_pillows_reason(tmp_path):
    """Damage inside the pixel data (IEND still present): OpenCV refuses it, Pillow classifies it."""
    p = tmp_path / "a.png"
    Image.fromarray(cxr_like(4, 120, 120)).save(p)
    data = bytearray(p.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 20:start + 60] = b"\xff" * 40  # broken deflate stream, file length unchanged
    p.write_bytes(bytes(data))
    with pytest.raises(ImageDecodeError) as e:
        load_image(p)
    assert e.value.reason in ("undecodable_image", "truncated_image") and "a.png" in str(e.value)
