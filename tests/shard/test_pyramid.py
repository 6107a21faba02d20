"""Square policy, antialiased pyramid, deterministic PNG encoding."""

import io

import numpy as np
import pytest
from PIL import Image
from shard_testkit import cxr_like

from mixvlp_ds.shard.pyramid import encode_png, make_pyramid, square_box, square_resize


@pytest.mark.parametrize("size", [224, 256])
def test_levels_sizes_and_dtype(size):
    levels = make_pyramid(cxr_like(0, 300, 260), size)
    assert [lv.shape for lv in levels] == [(size, size), (size // 2, size // 2), (size // 4, size // 4)]
    assert all(lv.dtype == np.uint8 for lv in levels)


def test_square_is_shorter_side_then_center_crop():
    assert square_box(300, 100) == (100, 0, 200, 100)
    assert square_box(100, 301) == (0, 100, 100, 200)
    wide = np.zeros((100, 300), np.uint8)
    wide[:, 100:200] = 255  # only the centred square is white
    out = np.asarray(square_resize(Image.fromarray(wide), 64))
    # The black sides were cropped, not squeezed in (the filter only grazes them at the border).
    assert out.shape == (64, 64) and out[:, 1:-1].min() >= 250 and out.min() > 200
    tall = np.zeros((300, 100), np.uint8)
    tall[100:200] = 255
    assert np.asarray(square_resize(Image.fromarray(tall), 64))[1:-1].min() >= 250


def test_downsampling_is_antialiased():
    checker = (np.indices((448, 448)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    for level in make_pyramid(checker, 224):
        # Point sampling would give pure 0/255; a low-pass filter gives uniform mid-gray.
        assert abs(float(level.mean()) - 127.5) < 2 and level.std() < 3


def test_upsampling_small_images_works():
    levels = make_pyramid(cxr_like(1, 40, 50), 224)
    assert levels[0].shape == (224, 224)


def test_encode_png_is_deterministic_lossless_grayscale():
    a = make_pyramid(cxr_like(2, 256, 256), 224)[0]
    b1, b2 = encode_png(a), encode_png(a.copy())
    assert b1 == b2
    im = Image.open(io.BytesIO(b1))
    assert im.mode == "L" and np.array_equal(np.asarray(im), a)
    for chunk in (b"tIME", b"tEXt", b"iTXt", b"pHYs"):  # nothing that depends on time or machine
        assert chunk not in b1


def test_bad_inputs():
    with pytest.raises(ValueError, match="divisible by 4"):
        make_pyramid(cxr_like(0), 222)
    with pytest.raises(ValueError, match="uint8"):
        make_pyramid(np.zeros((10, 10), np.float32), 224)
    with pytest.raises(ValueError, match="grayscale"):
        encode_png(Image.new("RGB", (4, 4)))
