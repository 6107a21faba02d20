"""Masking for the self-supervised objectives (sec. 3.1, METHOD.md "Pre-training objectives").

Words: `mixvlp_ds.text.masking.mask_tokens` (BERT's 80/10/10 rule), applied by the data pipeline.
Patches: 15% of the patches of EVERY pyramid level, each replaced by a random patch of the same
level drawn from any image of the batch (the paper masks by replacement, not by a mask token).
Only finest-level masked patches are predicted (L_img).
"""

from __future__ import annotations

import torch

from mixvlp_ds.text.masking import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "random_patch_masking"]


def choose_masked(num_rows: int, num_patches: int, ratio: float, device: torch.device,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Exactly round(ratio * N) (at least 1) random positions per row, MAE-style (argsort of noise).

    Returns mask (num_rows, num_patches) bool, True = masked."""
    k = max(1, round(ratio * num_patches))
    noise = torch.rand(num_rows, num_patches, generator=generator, device=device)
    idx = noise.argsort(dim=1)[:, :k]
    mask = torch.zeros(num_rows, num_patches, dtype=torch.bool, device=device)
    return mask.scatter_(1, idx, True)


def replace_with_random_patches(patches: torch.Tensor, mask: torch.Tensor,
                                generator: torch.Generator | None = None) -> torch.Tensor:
    """Put a random patch of the batch (same level, any row, any position) at every masked position.

    patches: (B, N, P), mask: (B, N) bool -> (B, N, P), a new tensor."""
    b, n, p = patches.shape
    flat = patches.reshape(b * n, p)
    picks = torch.randint(b * n, (b, n), generator=generator, device=patches.device)
    return torch.where(mask[:, :, None], flat[picks], patches)


def random_patch_masking(levels: list[torch.Tensor], ratio: float,
                         generator: torch.Generator | None = None,
                         masks: list[torch.Tensor] | None = None
                         ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mask `ratio` of the patches of every level by random patches of the batch.

    levels: [(B, N_l, P_l)] finest first; masks: optional given masks [(B, N_l) bool] (e.g. the
    regeneration passes); otherwise drawn. Returns (masked levels, masks)."""
    if masks is None:
        masks = [choose_masked(x.shape[0], x.shape[1], ratio, x.device, generator) for x in levels]
    masked = [replace_with_random_patches(x, m, generator) for x, m in zip(levels, masks, strict=True)]
    return masked, masks
