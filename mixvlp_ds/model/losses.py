"""The pre-training losses, each returning (value, count): L = w_txt L_txt + w_img L_img + w_co L_co.

A loss whose inputs are absent (no text rows, no masked word, no pair) is a 0 with count 0, so
image-only and text-only tuples simply contribute nothing to the other side's loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _zero(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=torch.float32, device=like.device)


def text_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """L_txt: cross-entropy at masked words. logits: (M, vocab) at the M masked positions,
    targets: (M,) original ids. Returns (mean CE, M)."""
    m = targets.numel()
    if m == 0:
        return _zero(targets), 0
    return F.cross_entropy(logits.float(), targets), m


def image_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """L_img: L1 between predicted and original pixels ([0, 1] scale) at masked finest-level patches.

    pred, target: (B, N, B*B), mask: (B, N) bool. Returns (mean |error| per pixel, number of masked
    patches). Unmasked patches do not enter the loss."""
    n = int(mask.sum())
    if n == 0:
        return _zero(pred), 0
    return (pred.float()[mask] - target.float()[mask]).abs().mean(), n


def pair_loss(logits: torch.Tensor, pair: torch.Tensor) -> tuple[torch.Tensor, int]:
    """L_co: BCE between I_pair = sigmoid(logits) and the pair label. logits, pair: (B,) over rows
    that have both an image and a text. Returns (mean BCE, B)."""
    n = logits.numel()
    if n == 0:
        return _zero(pair), 0
    return F.binary_cross_entropy_with_logits(logits.float(), pair.float()), n
