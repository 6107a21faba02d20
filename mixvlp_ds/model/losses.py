"""The pre-training losses, each a masked mean in fp32 returning (value, count):
L = w_txt L_txt + w_img L_img + w_co L_co.

Every input has a static shape (the whole batch); a weight or mask says which entries count, so
image-only and text-only tuples, padding rows and unmasked positions contribute nothing. The
count is a 0-d float tensor (no host read); with nothing to average the loss is 0 with count 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mixvlp_ds.text.masking import IGNORE_INDEX


def _masked_mean(values: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weight = weight.to(torch.float32)
    count = weight.sum()
    return (values * weight).sum() / count.clamp_min(1.0), count


def text_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_txt: cross-entropy at masked words. logits: (B, K, vocab) at each row's K budgeted
    positions, targets: (B, K) original ids, -100 at padding. Returns (mean CE, masked words)."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten().clamp_min(0), reduction="none")
    return _masked_mean(ce, targets.flatten() != IGNORE_INDEX)


def image_loss(pred: torch.Tensor, target: torch.Tensor,
               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_img: L1 between predicted and original pixels ([0, 1] scale) at masked finest-level patches.

    pred, target: (B, N, B*B), mask: (B, N) bool. Returns (mean |error| per pixel, number of masked
    patches). Unmasked patches do not enter the loss."""
    per_patch = (pred.float() - target.float()).abs().mean(dim=-1)
    return _masked_mean(per_patch, mask)


def pair_loss(logits: torch.Tensor, pair: torch.Tensor,
              weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L_co: BCE between I_pair = sigmoid(logits) and the pair label. logits, pair: (B,); weight:
    (B,) bool, True where the row has both an image and a text (default all). Returns (mean BCE,
    pairs)."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), pair.float(), reduction="none")
    return _masked_mean(bce, torch.ones_like(bce) if weight is None else weight)


def batch_pair_loss(logits: torch.Tensor, pair: torch.Tensor, weight: torch.Tensor,
                    same_report: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """L_co over the batch's true pairs (model.pair_loss = "batch"). logits: (B, B), entry (i, j) for
    image i and report j; pair (B,); weight (B,) bool: the row has both an image and a report;
    same_report (B, B) bool: reports i and j are the same words.

    The image of every true pair is scored against the report of every true pair: its own (or the
    same words in another row) is a positive, every other a negative. Re-paired rows do not enter:
    with their images (all negatives) the head learns which institution was re-paired, and with
    their random reports as extra negatives it stayed at chance too (measured, docs/
    synthetic_results.md). Returns (mean BCE of the positives / 2 + of the negatives / 2, pairs)."""
    true_pair = weight & (pair > 0.5)                                            # (B,)
    valid = true_pair[:, None] & true_pair[None, :]                              # (B, B)
    positive = valid & same_report
    bce = F.binary_cross_entropy_with_logits(logits.float(), positive.float(), reduction="none")
    pos, _ = _masked_mean(bce, positive)
    neg, _ = _masked_mean(bce, valid & ~positive)
    return 0.5 * pos + 0.5 * neg, valid.float().sum()
