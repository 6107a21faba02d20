"""StepMeter counts the tokens the model encodes: words for a model that reads text, every patch of
each image row for one that reads images, never a side the model does not read."""

from __future__ import annotations

import torch

from mixvlp_ds.model.config import ModelConfig
from mixvlp_ds.train.metrics import StepMeter

BOTH = ModelConfig.preset("tiny")                         # 64 + 16 + 4 = 84 patches per image
TEXT = ModelConfig.preset("tiny", arch="aiayn-text")
IMAGE = ModelConfig.preset("tiny", arch="aiayn-image")    # single scale: 64 patches per image


def batch(text: bool = True) -> dict:
    """3 rows: image + 5-token report, image only ([CLS] [SEP]), 7-token report only."""
    b = {"has_image": torch.tensor([True, True, False]), "has_text": torch.tensor([True, False, True]),
         "pair": torch.tensor([1.0, 0.0, 0.0]), "institution": ["a", "b", "a"]}
    if text:
        b["attention_mask"] = torch.tensor([[1] * 5 + [0] * 2, [1] * 2 + [0] * 5, [1] * 7])
    return b


def tokens(model: ModelConfig, b: dict) -> dict:
    meter = StepMeter("cpu", model)
    zero = torch.zeros(())
    out = {"loss": zero, "L_txt": zero, "L_img": zero, "L_co": zero, "n_txt": 0, "n_img": 0, "n_co": 0}
    meter.add(out, b)
    meter.end_step(applied=True)
    return meter.read()


def test_tokens_are_what_the_model_encodes():
    assert BOTH.num_patches == 84 and IMAGE.num_patches == 64
    assert tokens(BOTH, batch())["tokens"] == 14 + 2 * 84
    text = tokens(TEXT, batch())   # the image rows' patches are not encoded: not counted
    assert text["tokens"] == 14
    assert tokens(IMAGE, batch(text=False))["tokens"] == 2 * 64   # a batch without tokens
    # the batch's composition is the tuples', whatever the model reads
    assert (text["samples"], text["share_paired"], text["share_image_only"]) == (3, 1 / 3, 1 / 3)
