"""Decoded rows -> the batch dict of `mixvlp_ds.data.batch` (stack pixels, tokenize, mask).

What a batch holds is the model's to say, how it is laid out the data's: `BatchSpec.for_model`
takes the pixels only for a model that reads images and the words only for one that reads text,
at the model's image size, report length and mask ratios, and the label space and padding from
the data config. Fine-tuning and evaluation, which load a model but no data config, write the
loaded model's values into a `BatchSpec` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import torch

from mixvlp_ds.data.batch import Batch
from mixvlp_ds.labels import label_names
from mixvlp_ds.patch_masking import PatchMasking, draw_patch_masks
from mixvlp_ds.shard.format import level_sizes
from mixvlp_ds.text.masking import mask_tokens, tokenizer_mask_args

if TYPE_CHECKING:
    from mixvlp_ds.data.config import DataConfig
    from mixvlp_ds.model.config import ModelConfig


@dataclass(frozen=True)
class BatchSpec:
    """What a batch is made to: which sides it carries, at which sizes, masked how, laid out how."""

    label_space: str                           # the labels' space (data.label_space)
    image_size: int | None                     # model.image_size; None: no pyramid (reads no image)
    max_text_len: int | None                   # model.max_text_len; None: no tokens (reads no text)
    pad_to_max: bool = True                    # (B, max_text_len); False: the batch's longest report
    text_mask_ratio: float | None = None       # model.text_mask_ratio: BERT-mask words; None: unmasked
    patch_masking: PatchMasking | None = None  # model's patches per level, image_mask_ratio; None: none

    @classmethod
    def for_model(cls, model: ModelConfig, data: DataConfig) -> BatchSpec:
        """A pre-training batch for `model`: its image side (pyramid and patch masks) only when it
        reads images, its text side (tokens and word masks) only when it reads text; the
        labels and the padding as `data` says (words unmasked with data.mask_text false)."""
        text = model.max_text_len if model.use_text else None
        ratio = model.text_mask_ratio if model.use_text and data.mask_text else None
        image = model.image_size if model.use_image else None
        masking = PatchMasking(model.patches_per_level(), model.image_mask_ratio) if model.use_image else None
        return cls(data.label_space, image, text, data.pad_to_max, ratio, masking)

    @property
    def images(self) -> bool:
        """The batch carries pixels (a pyramid)."""
        return self.image_size is not None

    @property
    def text(self) -> bool:
        """The batch carries tokens (input_ids, attention_mask, mlm_labels)."""
        return self.max_text_len is not None


def collate(samples: list[dict], tokenizer, spec: BatchSpec,
            generator: torch.Generator | None = None) -> Batch:
    """Stack decoded rows into a batch made to `spec`.

    samples: dicts with "pyramid" (3 uint8 arrays finest first, or None), "text" (str or None),
    "labels" (float32 (K,) in the label space), "key", "institution", "patient_id", and optionally
    "pair" (default 1.0 when both sides are present) and "text_key" (default: "key"); a row
    with neither image nor text is padding (`padding_row`). A side the spec leaves out need not be
    decoded: the row then says whether it has one with "has_image" / "has_text" (default: whether
    "pyramid" / "text" is there), so has_image, has_text and pair describe the tuple whatever the
    model reads. `iter_samples` rows fit as they are (fine-tuning); the pre-training loader adds
    pair/text_key. Word masks and then patch masks are drawn from `generator`.
    """
    b = len(samples)
    if b == 0:
        raise ValueError("collate of an empty list")
    has_image = _sides(samples, "pyramid", "has_image", spec.images)
    has_text = _sides(samples, "text", "has_text", spec.text)
    k = len(label_names(spec.label_space))
    labels = torch.from_numpy(np.stack([np.asarray(s["labels"], dtype=np.float32).reshape(k)
                                        for s in samples])) if k else torch.zeros(b, 0)
    pair = torch.tensor([float(s.get("pair", 1.0)) if (has_image[i] and has_text[i]) else 0.0
                         for i, s in enumerate(samples)], dtype=torch.float32)
    batch: Batch = {
        "has_image": has_image, "has_text": has_text, "pair": pair, "labels": labels,
        "key": [s["key"] for s in samples],
        "text_key": [s.get("text_key", s["key"]) if has_text[i] else "" for i, s in enumerate(samples)],
        "institution": [s["institution"] for s in samples],
        "patient_id": [s["patient_id"] for s in samples],
    }
    if spec.images:
        batch["pyramid"] = _stack_images(samples, spec.image_size)
    if spec.text:
        batch.update(_text_side(samples, tokenizer, spec, has_text, generator))
    if spec.patch_masking is not None:
        batch["patch_mask"], batch["patch_source"] = draw_patch_masks(
            has_image, spec.patch_masking.patches_per_level, spec.patch_masking.ratio, generator)
    return batch


def _sides(samples: list[dict], field: str, flag: str, decoded: bool) -> torch.Tensor:
    """(B,) bool: the rows that hold `field`; where the side is not decoded, the row's `flag`."""
    if decoded:
        return torch.tensor([s.get(field) is not None for s in samples], dtype=torch.bool)
    return torch.tensor([bool(s.get(flag, s.get(field) is not None)) for s in samples], dtype=torch.bool)


def _text_side(samples: list[dict], tokenizer, spec: BatchSpec, has_text: torch.Tensor,
               generator: torch.Generator | None) -> Batch:
    """input_ids (masked when the spec masks words), attention_mask, mlm_labels."""
    texts = [s["text"] if s.get("text") is not None else "" for s in samples]
    input_ids, attention_mask = tokenize(tokenizer, texts, spec.max_text_len, spec.pad_to_max)
    mlm_labels = torch.full_like(input_ids, -100)
    if spec.text_mask_ratio is not None:
        masked, labels = mask_tokens(input_ids, attention_mask, prob=spec.text_mask_ratio,
                                     generator=generator, **tokenizer_mask_args(tokenizer))
        rows = has_text[:, None]
        input_ids = torch.where(rows, masked, input_ids)
        mlm_labels = torch.where(rows, labels, mlm_labels)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "mlm_labels": mlm_labels}


def _stack_images(samples: list[dict], image_size: int) -> list[torch.Tensor]:
    """The uint8 pyramid of the batch, zeros where a row has no image."""
    pyramid = [np.zeros((len(samples), n, n), dtype=np.uint8) for n in level_sizes(image_size)]
    for i, s in enumerate(samples):
        if s.get("pyramid") is not None:
            for level, arr in zip(pyramid, s["pyramid"], strict=True):
                level[i] = arr
    return [torch.from_numpy(level) for level in pyramid]


def padding_row(label_space: str) -> dict:
    """A row with neither image nor text: it fills a short last batch and carries no loss."""
    return {"pyramid": None, "text": None, "pair": 0.0, "key": "", "text_key": "", "institution": "",
            "patient_id": "", "labels": np.full(len(label_names(label_space)), np.nan, dtype=np.float32)}


def tokenize(tokenizer, texts: list[str], max_len: int,
             pad_to_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """texts -> (input_ids, attention_mask), int64 (B, max_len) (or (B, longest) without pad_to_max).
    max_len: the model's report length (model.max_text_len).
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
