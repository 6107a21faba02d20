"""The fast paths of the loader give exactly what the plain library calls give."""

import io

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.data.collate import tokenize
from mixvlp_ds.data.reader import SampleError, decode_png
from mixvlp_ds.shard.pyramid import encode_png


@pytest.mark.parametrize("pad_to_max", [True, False])
def test_batch_tokenize_equals_the_transformers_call(tokenizer, pad_to_max):
    texts = ["heart size normal", "", "lungs clear " * 200, "effusion, pneumothorax; ÉDÈME?",
             "unknownword zzz qqq", "  left   base  "]
    for max_len in (150, 8):
        ids, mask = tokenize(tokenizer, texts, max_len, pad_to_max)
        ref = tokenizer(texts, max_length=max_len, truncation=True,
                        padding="max_length" if pad_to_max else "longest", return_tensors="pt")
        assert ids.dtype == mask.dtype == ref["input_ids"].long().dtype
        assert ids.tolist() == ref["input_ids"].tolist() and mask.tolist() == ref["attention_mask"].tolist()
    # The wrapper's own state is left alone: a plain call afterwards still works as before.
    assert tokenizer("heart")["input_ids"] == tokenizer(["heart"])["input_ids"][0]


def test_png_decode_equals_pillow_and_still_converts_or_rejects():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    for png in (encode_png(a), _pil_png(a), _pil_png(a, interlace=1)):
        assert np.array_equal(decode_png(png, 32, "img.32.png"), np.asarray(Image.open(io.BytesIO(png))))
    rgb = np.stack([a, a, a], -1)
    assert np.array_equal(decode_png(_pil_png(rgb), 32, "x"), a)  # not L: Pillow converts
    with pytest.raises(SampleError, match="16x16, expected 32x32"):
        decode_png(encode_png(a[:16, :16]), 32, "img.32.png")
    with pytest.raises(SampleError, match="bad PNG img.32.png"):
        decode_png(encode_png(a)[:-40], 32, "img.32.png")


def _pil_png(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **kw)
    return buf.getvalue()
