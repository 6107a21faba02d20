"""Masking for the self-supervised objectives (sec. 3.1, METHOD.md "Pre-training objectives").

Words: BERT's rule on 15% of the real (non-special) tokens: 80% -> [MASK], 10% -> a random
word, 10% unchanged; every chosen position is predicted. The data pipeline calls `mask_tokens`
in its collate so the batch carries `mlm_labels`.
Patches: 15% of the patches of EVERY pyramid level, each replaced by a random patch of the same
level drawn from any image of the batch (the paper masks by replacement, not by a mask token).
Only finest-level masked patches are predicted (L_img).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

IGNORE_INDEX = -100


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_token_id: int,
                vocab_size: int, special_token_ids: Iterable[int], prob: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of real tokens.

    input_ids, attention_mask: (B, L). Returns (masked_ids (B, L), mlm_labels (B, L)) where
    mlm_labels hold the original id at chosen positions and -100 elsewhere. Special tokens
    ([CLS], [SEP], [PAD], ...) are never chosen.
    """
    dev = input_ids.device
    candidates = attention_mask.bool().clone()
    for sid in special_token_ids:
        candidates &= input_ids != sid
    u = torch.rand(input_ids.shape, generator=generator, device=dev)
    chosen = candidates & (u < prob)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, generator=generator, device=dev)
    random_words = torch.randint(vocab_size, input_ids.shape, generator=generator, device=dev)
    masked = input_ids.clone()
    masked = torch.where(chosen & (action < 0.8), torch.full_like(masked, mask_token_id), masked)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_words, masked)
    return masked, labels


def tokenizer_mask_args(tokenizer) -> dict:
    """The keyword arguments of `mask_tokens` for a Hugging Face tokenizer."""
    return dict(mask_token_id=tokenizer.mask_token_id, vocab_size=len(tokenizer),
                special_token_ids=list(tokenizer.all_special_ids))


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
