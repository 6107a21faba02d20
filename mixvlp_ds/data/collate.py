"""Decoded rows -> the batch dict of `mixvlp_ds.data.batch` (tokenize <= 150, MLM mask, stack)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from mixvlp_ds.data.batch import Batch
from mixvlp_ds.labels import label_names
from mixvlp_ds.patch_masking import PatchMasking, draw_patch_masks
from mixvlp_ds.shard.format import level_sizes
from mixvlp_ds.text.masking import mask_tokens, tokenizer_mask_args
from mixvlp_ds.text.tokenizer import MAX_LENGTH


@dataclass(frozen=True)
class BatchSpec:
    """What a batch is made to: its label space, image size, report length and padding, and whether
    its words are masked (at which rate) and its patch masks drawn. The pre-training loader's comes
    from its DataConfig (`for_pretraining`); fine-tuning's masks nothing and pads to the longest."""

    label_space: str = "chexpert14"
    image_size: int | None = None            # None: the first image's
    max_text_len: int = MAX_LENGTH
    pad_to_max: bool = True                  # (B, max_text_len); False: the batch's longest report
    mask_text: bool = False
    mask_prob: float = 0.15
    patch_masking: PatchMasking | None = None
    images: bool = True                      # False: a text-only batch, no pyramid (text-only models)

    @classmethod
    def for_pretraining(cls, cfg, patch_masking: PatchMasking | None) -> BatchSpec:
        """cfg: a DataConfig."""
        return cls(cfg.label_space, cfg.image_size, cfg.max_text_len, cfg.pad_to_max, cfg.mask_text,
                   cfg.mask_text_prob, patch_masking)


def collate(samples: list[dict], tokenizer, spec: BatchSpec = BatchSpec(),
            generator: torch.Generator | None = None) -> Batch:
    """Stack decoded rows into a batch made to `spec`.

    samples: dicts with "pyramid" (3 uint8 arrays finest first, or None), "text" (str or None),
    "labels" (float32 (K,) in the label space), "key", "institution", "patient_id", and optionally
    "pair" (default 1.0 when both sides are present) and "text_key" (default: "key"); a row
    with neither image nor text is padding (`padding_row`). `iter_samples` rows fit as they are
    (fine-tuning); the pre-training loader adds pair/text_key. Word masks and patch masks are drawn
    from `generator`.
    """
    b = len(samples)
    if b == 0:
        raise ValueError("collate of an empty list")
    if spec.images:
        pyramid, has_image = _stack_images(samples, spec.image_size)
    else:
        pyramid, has_image = None, torch.zeros(b, dtype=torch.bool)
    has_text = torch.tensor([s.get("text") is not None for s in samples], dtype=torch.bool)
    texts = [s["text"] if s.get("text") is not None else "" for s in samples]
    input_ids, attention_mask = tokenize(tokenizer, texts, spec.max_text_len, spec.pad_to_max)
    mlm_labels = torch.full_like(input_ids, -100)
    if spec.mask_text:
        masked, labels = mask_tokens(input_ids, attention_mask, prob=spec.mask_prob, generator=generator,
                                     **tokenizer_mask_args(tokenizer))
        rows = has_text[:, None]
        input_ids = torch.where(rows, masked, input_ids)
        mlm_labels = torch.where(rows, labels, mlm_labels)
    k = len(label_names(spec.label_space))
    labels = torch.from_numpy(np.stack([np.asarray(s["labels"], dtype=np.float32).reshape(k)
                                        for s in samples])) if k else torch.zeros(b, 0)
    pair = torch.tensor([float(s.get("pair", 1.0)) if (has_image[i] and has_text[i]) else 0.0
                         for i, s in enumerate(samples)], dtype=torch.float32)
    batch: Batch = {
        "has_image": has_image, "input_ids": input_ids, "attention_mask": attention_mask,
        "mlm_labels": mlm_labels, "has_text": has_text, "pair": pair, "labels": labels,
        "key": [s["key"] for s in samples],
        "text_key": [s.get("text_key", s["key"]) if s.get("text") is not None else "" for s in samples],
        "institution": [s["institution"] for s in samples],
        "patient_id": [s["patient_id"] for s in samples],
    }
    if pyramid is not None:
        batch["pyramid"] = pyramid
    if spec.patch_masking is not None:
        batch["patch_mask"], batch["patch_source"] = draw_patch_masks(
            has_image, spec.patch_masking.patches_per_level, spec.patch_masking.ratio, generator)
    return batch


def _stack_images(samples: list[dict], image_size: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The uint8 pyramid of the batch (zeros where a row has no image) and has_image (B,)."""
    if image_size is None:
        first = next((s["pyramid"] for s in samples if s.get("pyramid") is not None), None)
        image_size = first[0].shape[0] if first is not None else 224
    pyramid = [np.zeros((len(samples), n, n), dtype=np.uint8) for n in level_sizes(image_size)]
    has_image = torch.zeros(len(samples), dtype=torch.bool)
    for i, s in enumerate(samples):
        if s.get("pyramid") is not None:
            for level, arr in zip(pyramid, s["pyramid"], strict=True):
                level[i] = arr
            has_image[i] = True
    return [torch.from_numpy(level) for level in pyramid], has_image


def padding_row(label_space: str) -> dict:
    """A row with neither image nor text: it fills a short last batch and carries no loss."""
    return {"pyramid": None, "text": None, "pair": 0.0, "key": "", "text_key": "", "institution": "",
            "patient_id": "", "labels": np.full(len(label_names(label_space)), np.nan, dtype=np.float32)}


def tokenize(tokenizer, texts: list[str], max_len: int = MAX_LENGTH,
             pad_to_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> (input_ids, attention_mask), int64 (B, max_len) (or (B, longest) without pad_to_max).

    Equal to `tokenizer(texts, max_length=max_len, truncation=True, padding=..., return_tensors="pt")`
    (tested). For a fast (Rust) tokenizer the batch goes straight to its `encode_batch` and the
    ids into one numpy array: the transformers wrapper spends more time converting nested lists
    to tensors than the Rust side takes to tokenize."""
    encoder = _batch_encoder(tokenizer, max_len, pad_to_max)
    if encoder is None:
        enc = tokenizer(texts, max_length=max_len, truncation=True,
                        padding="max_length" if pad_to_max else "longest", return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()
    encs = encoder.encode_batch(texts)
    ids = np.array([e.ids for e in encs], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
    return torch.from_numpy(ids), torch.from_numpy(mask)


@lru_cache(maxsize=8)
def _batch_encoder(tokenizer, max_len: int, pad_to_max: bool):
    """A private copy of a fast tokenizer's Rust tokenizer, set to truncate to `max_len` and pad
    (to `max_len`, or to the longest row) as the transformers call would; None for a slow one.
    A copy, because the wrapper re-configures its own backend on every call."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or tokenizer.pad_token_id is None or tokenizer.padding_side != "right":
        return None
    from tokenizers import Tokenizer

    enc = Tokenizer.from_str(backend.to_str())
    enc.enable_truncation(max_len, strategy="longest_first", direction=tokenizer.truncation_side)
    enc.enable_padding(direction="right", pad_id=tokenizer.pad_token_id,
                       pad_type_id=tokenizer.pad_token_type_id, pad_token=tokenizer.pad_token,
                       length=max_len if pad_to_max else None)
    return enc
