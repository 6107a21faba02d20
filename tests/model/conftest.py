"""Batch factory for the model tests: tiny batches that follow mixvlp_ds/data/batch.py."""

from __future__ import annotations

import pytest
import torch

from mixvlp_ds.model import ModelConfig, mask_tokens
from mixvlp_ds.patch_masking import draw_patch_masks

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def make_batch(cfg: ModelConfig, b: int = 4, seed: int = 0, text_len: int = 12,
               has_image: list[bool] | None = None, has_text: list[bool] | None = None,
               pair: list[float] | None = None, mask_text: bool = True) -> dict:
    """A random batch: smooth-ish images (so patches are predictable), random reports of varying
    length, BERT-masked text, patch masks drawn as the data pipeline draws them."""
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    has_image = torch.tensor(has_image if has_image is not None else [True] * b)
    has_text = torch.tensor(has_text if has_text is not None else [True] * b)
    base = torch.rand(b, 1, s // 4, s // 4, generator=g)
    full = torch.nn.functional.interpolate(base, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    full = full * has_image[:, None, None]
    pyramid = [(torch.nn.functional.interpolate(full[:, None], size=(n, n), mode="area")[:, 0] * 255)
               .round().to(torch.uint8) for n in (s, s // 2, s // 4)]
    ids = torch.full((b, text_len), PAD, dtype=torch.long)
    att = torch.zeros(b, text_len, dtype=torch.long)
    for i in range(b):
        n = int(torch.randint(4, text_len - 1, (1,), generator=g)) if has_text[i] else 0
        words = torch.randint(5, cfg.vocab_size, (n,), generator=g)
        row = torch.cat([torch.tensor([CLS]), words, torch.tensor([SEP])])
        ids[i, : len(row)] = row
        att[i, : len(row)] = 1
    labels = torch.full_like(ids, -100)
    if mask_text:
        ids, labels = mask_tokens(ids, att, mask_token_id=MASK, vocab_size=cfg.vocab_size,
                                  special_token_ids=[PAD, UNK, CLS, SEP, MASK], prob=0.3, generator=g)
        labels[~has_text] = -100
    patch_mask, patch_source = draw_patch_masks(has_image, cfg.patches_per_level(), cfg.image_mask_ratio, g)
    return {
        "pyramid": pyramid, "has_image": has_image, "patch_mask": patch_mask, "patch_source": patch_source,
        "input_ids": ids, "attention_mask": att,
        "mlm_labels": labels, "has_text": has_text,
        "pair": torch.tensor(pair if pair is not None else [1.0, 0.0] * (b // 2) + [1.0] * (b % 2)),
        "labels": torch.zeros(b, 0), "key": [f"k{i}" for i in range(b)],
        "text_key": [f"t{i}" for i in range(b)],
        "institution": ["x"] * b, "patient_id": [f"p{i}" for i in range(b)],
    }


@pytest.fixture
def batch_factory():
    return make_batch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; the 2-core test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
