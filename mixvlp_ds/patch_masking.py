"""Which image patches a pre-training batch masks, and which patch replaces each (sec. 3.1).

A share of the patches of EVERY pyramid level is masked (model.image_mask_ratio, which the caller
passes: this module owns no ratio), each replaced by a random patch of the same level drawn from
any image of the batch (the paper masks by replacement, not by a mask token).
The draw happens here, on the host, with the batch's own seeded generator, and travels in the
batch as two tensors per level; the model only gathers (`mixvlp_ds.model.masking.replace_patches`).
So the training step has static shapes and no random draw of its own, and a resumed run replays
the same masks from the data pipeline's state alone.
A leaf of the package (torch only): the data pipeline draws with it (`data/collate.py`), and so
does the model's regeneration (`model.masking.random_patch_masking`), neither importing the other.

    masks, sources = draw_patch_masks(has_image, (64, 16, 4), 0.15, generator)
    masks[l]:   (B, N_l) bool, True = masked (always False in rows without an image)
    sources[l]: (B, N_l) long, index into the level's (B * N_l) flattened patches of the patch
                that stands at this position (its own index where not masked)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatchMasking:
    """What the draw needs of the model (its config is the owner of both): patches per level,
    finest first, and the mask ratio."""

    patches_per_level: tuple[int, ...]   # ModelConfig.patches_per_level()
    ratio: float                         # model.image_mask_ratio


def masked_count(num_patches: int, ratio: float) -> int:
    """Patches masked per row and level: round(ratio * N), at least 1."""
    return max(1, round(ratio * num_patches))


def draw_patch_masks(has_image: torch.Tensor, patches_per_level: tuple[int, ...], ratio: float,
                     generator: torch.Generator | None = None,
                     given: list[torch.Tensor] | None = None
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Masks and replacing patches for every level, over the rows that have an image.

    Per level, exactly `masked_count` random positions per image row (MAE's argsort of noise);
    then per level a uniformly drawn patch of any image row for every position. `given`: masks
    [(B, N_l) bool] to use instead of drawing them (the regeneration passes)."""
    dev = has_image.device
    rows = has_image.bool().nonzero().squeeze(1)
    b, bi = has_image.numel(), rows.numel()
    if given is None:
        given = []
        for n in patches_per_level:
            noise = torch.rand(bi, n, generator=generator, device=dev)
            idx = noise.argsort(dim=1)[:, :masked_count(n, ratio)]
            small = torch.zeros(bi, n, dtype=torch.bool, device=dev).scatter_(1, idx, True)
            given.append(torch.zeros(b, n, dtype=torch.bool, device=dev).index_copy_(0, rows, small))
    masks, sources = [], []
    for n, mask in zip(patches_per_level, given, strict=True):
        mask = mask.to(dev).bool() & has_image.bool()[:, None]
        own = torch.arange(b * n, device=dev).reshape(b, n)
        drawn = own.clone()
        if bi:
            picks = torch.randint(bi * n, (bi, n), generator=generator, device=dev)
            drawn[rows] = rows[picks // n] * n + picks % n
        masks.append(mask)
        sources.append(torch.where(mask, drawn, own))
    return masks, sources
