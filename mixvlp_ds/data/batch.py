"""The batch: the contract between the data pipeline (`mixvlp_ds.data`) and the model.

A batch is a plain dict (DeepSpeed- and pickle-friendly) with B rows. Each row is one tuple of
(image, report) where either side may be absent, or a padding row with neither (the pre-training
loader fills its last batch of an epoch up to B rows with them, so every batch has one shape).
Which sides a batch carries is the model's choice (`collate.BatchSpec.for_model`): the image
fields only for a model that reads images, the text fields only for one that reads text.

Every batch:
    "has_image":      bool (B,), the row's tuple has an image (also where the batch carries no pixels)
    "has_text":       bool (B,), the row's tuple has a report (also where the batch carries no tokens)
    "pair":           float (B,), 1.0 true image-report pair, 0.0 re-paired; only meaningful
                      where has_image & has_text.
    "labels":         float (B, K), finding labels of the image's record (1 / 0 / -1 uncertain,
                      NaN not mentioned), in the loader's label space; K = 0 when unlabelled.
    "key":            list[str], the image record's key (or the report's, for text-only rows;
                      "" for padding rows)
    "text_key":       list[str], the report record's key ("" when no text)
    "institution":    list[str], the image's institution (the report's for text-only rows)
    "patient_id":     list[str]
Image fields (a model that reads images):
    "pyramid":        list of 3 uint8 tensors, finest first, S = model.image_size:
                      [(B, S, S), (B, S/2, S/2), (B, S/4, S/4)]; all zeros where has_image is False.
                      The model scales pixels to [0, 1] on its device (uint8 keeps host->device
                      copies 4x smaller).
    "patch_mask":     list of bool (B, N_l), one per level the model encodes, the patches masked
                      for L_img (model.image_mask_ratio of every level of every image row; False
                      where has_image is False). Only in pre-training batches (`mixvlp_ds.patch_masking`).
    "patch_source":   list of long (B, N_l), index into the level's B*N_l flattened patches of the
                      patch that replaces a masked one (its own index elsewhere).
Text fields (a model that reads text):
    "input_ids":      long (B, L), L <= model.max_text_len: [CLS] tokens [SEP] [PAD]..., already
                      MLM-masked (BERT's rule, a fixed budget of masked words per row) when the loader
                      masks text. Rows without text hold [CLS] [SEP] [PAD]... so no row is all padding.
    "attention_mask": long (B, L), 1 for real tokens (incl. [CLS]/[SEP]), 0 for padding.
    "mlm_labels":     long (B, L), the original token id at masked positions, -100 elsewhere
                      (all -100 in rows without text, or when masking is off).

`model_inputs(batch, device)` is what the training step hands the model: the tensors it reads
only, so a compiled step never sees (and never guards on) the strings, and no copy is made of
the labels or of a side the batch does not carry.
"""

from __future__ import annotations

from typing import Any

import torch

Batch = dict[str, Any]

TEXT_FIELDS = ("input_ids", "attention_mask", "mlm_labels", "has_text")   # a batch with text has all
TENSOR_FIELDS = ("has_image", "has_text", "pair", "labels")   # in every batch
LIST_FIELDS = ("key", "text_key", "institution", "patient_id")


def model_inputs(batch: Batch, device: torch.device | str, non_blocking: bool = True) -> Batch:
    """The tensors of a batch the model reads (and lists of tensors: the pyramid, the patch masks),
    moved to `device`. Left behind: strings and logging extras, the labels (fine-tuning's), and
    the has_image / has_text flag of a side the batch does not carry (MixVLP reads a side's flag
    only with the side, mixvlp.py `forward_encoder`). With pinned host memory the copies overlap
    the previous step."""
    skip = {"labels"}
    if "pyramid" not in batch:
        skip.add("has_image")
    if "input_ids" not in batch:
        skip.add("has_text")
    out: Batch = {}
    for k, v in batch.items():
        if k in skip:
            continue
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=non_blocking)
        elif isinstance(v, list) and v and all(isinstance(t, torch.Tensor) for t in v):
            out[k] = [t.to(device, non_blocking=non_blocking) for t in v]
    return out


def check_batch(batch: Batch) -> int:
    """Validate shapes/dtypes of a batch against the contract; returns the number of real rows
    (B minus padding rows). Raises ValueError."""
    missing = [k for k in TENSOR_FIELDS + LIST_FIELDS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks fields {missing}")
    b = batch["has_image"].shape[0]
    for k in ("has_image", "has_text", "pair"):
        if batch[k].shape != (b,):
            raise ValueError(f"{k} must have shape ({b},)")
    if batch["labels"].ndim != 2 or batch["labels"].shape[0] != b:
        raise ValueError("labels must be (B, K)")
    for k in LIST_FIELDS:
        if len(batch[k]) != b:
            raise ValueError(f"{k} must have {b} entries")
    real = batch["has_image"] | batch["has_text"]
    if any(k for k, r in zip(batch["key"], real.tolist(), strict=True) if not r):
        raise ValueError("a row has neither image nor text but is not a padding row (key \"\")")
    if "pyramid" in batch:
        _check_image_side(batch, b)
    elif "patch_mask" in batch:
        raise ValueError("patch masks without a pyramid")
    if "input_ids" in batch:
        _check_text_side(batch, b)
    return int(real.sum())


def _check_image_side(batch: Batch, b: int) -> None:
    pyr = batch["pyramid"]
    if len(pyr) != 3 or any(t.dtype != torch.uint8 or t.shape[0] != b for t in pyr):
        raise ValueError("pyramid must be 3 uint8 tensors of B rows")
    s = pyr[0].shape[-1]
    if [tuple(t.shape[1:]) for t in pyr] != [(s, s), (s // 2, s // 2), (s // 4, s // 4)]:
        raise ValueError(f"pyramid levels have shapes {[tuple(t.shape) for t in pyr]}")
    if "patch_mask" in batch:
        for m, src in zip(batch["patch_mask"], batch["patch_source"], strict=True):
            n = m.shape[1]
            if m.dtype != torch.bool or m.shape != (b, n) or src.shape != (b, n):
                raise ValueError("patch_mask / patch_source must be (B, N_l) per level")
            if src.min() < 0 or src.max() >= b * n:
                raise ValueError("patch_source points outside the level's B*N_l patches")
            if (m & ~batch["has_image"][:, None]).any():
                raise ValueError("patch_mask masks patches of a row without an image")


def _check_text_side(batch: Batch, b: int) -> None:
    missing = [k for k in TEXT_FIELDS if k not in batch]
    if missing:
        raise ValueError(f"batch has input_ids but lacks {missing}")
    if batch["input_ids"].ndim != 2 or batch["input_ids"].shape[0] != b:
        raise ValueError(f"input_ids must be (B, L) with B = {b}")
    for k in ("attention_mask", "mlm_labels"):
        if batch[k].shape != batch["input_ids"].shape:
            raise ValueError(f"{k} shape {tuple(batch[k].shape)} != input_ids "
                             f"{tuple(batch['input_ids'].shape)}")
    # the batch knows no model: 512 is the bound every model's report length keeps (ModelConfig.validate)
    if batch["input_ids"].shape[1] > 512:
        raise ValueError("text longer than 512 tokens, more than any model.max_text_len allows")
