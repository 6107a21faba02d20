"""Masking for the self-supervised objectives (sec. 3.1, docs/method.md "Objectives").

Words: `mixvlp_ds.text.masking.mask_tokens` (BERT's 80/10/10 rule, a fixed budget per row),
applied by the data pipeline; the model gathers the budget's positions (`masked_word_positions`).
Patches: drawn by the data pipeline too (`mixvlp_ds.patch_masking`): 15% of the patches of
EVERY pyramid level, each replaced by a random patch of the same level from any image of the
batch; the model only gathers them (`replace_patches`). Only finest-level masked patches are
predicted (L_img). Both gathers have static shapes: no row selection, no boolean indexing.
"""

from __future__ import annotations

import torch

from mixvlp_ds.patch_masking import draw_patch_masks
from mixvlp_ds.text.masking import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "masked_word_positions", "random_patch_masking", "replace_patches"]


def replace_patches(patches: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Put patch `source` of the batch (same level) at every masked position.

    patches: (B, N, P); mask: (B, N) bool; source: (B, N) long into the B*N flattened patches.
    Returns (B, N, P), a new tensor."""
    b, n, p = patches.shape
    picked = patches.reshape(b * n, p)[source.reshape(-1)].reshape(b, n, p)
    return torch.where(mask[:, :, None], picked, patches)


def masked_word_positions(mlm_labels: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked positions of every row, padded to the row budget (BERT's max_predictions_per_seq).

    mlm_labels: (B, L), the original id at masked positions, -100 elsewhere; at most `budget`
    masked positions per row (the data pipeline's guarantee). Returns positions (B, K) long and
    targets (B, K) with -100 at padding, K = min(budget, L): masked positions first, in order."""
    order = torch.argsort((mlm_labels == IGNORE_INDEX).to(torch.int8), dim=1, stable=True)
    positions = order[:, :budget]
    return positions, mlm_labels.gather(1, positions)


def random_patch_masking(levels: list[torch.Tensor], ratio: float,
                         generator: torch.Generator | None = None,
                         masks: list[torch.Tensor] | None = None
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Draw and apply patch masks in one go, for images outside pre-training (regeneration).

    levels: [(B, N_l, P_l)] finest first, every row an image; masks: optional given masks
    [(B, N_l) bool]; otherwise drawn. Returns (masked levels, masks)."""
    has_image = torch.ones(levels[0].shape[0], dtype=torch.bool, device=levels[0].device)
    masks, sources = draw_patch_masks(has_image, tuple(x.shape[1] for x in levels), ratio, generator, masks)
    return [replace_patches(x, m, s) for x, m, s in zip(levels, masks, sources, strict=True)], masks


def same_report(input_ids: torch.Tensor, mlm_labels: torch.Tensor) -> torch.Tensor:
    """(B, L) masked word ids and their MLM labels (the original id at masked positions, else
    IGNORE_INDEX) -> (B, B) bool: rows i and j hold the same words before masking."""
    words = torch.where(mlm_labels != IGNORE_INDEX, mlm_labels, input_ids)
    return (words[:, None, :] == words[None, :, :]).all(dim=-1)
