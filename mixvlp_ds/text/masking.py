"""BERT's masked-language-model masking of report tokens (sec. 3.1, METHOD.md).

15% of the real (non-special) tokens are chosen: 80% -> [MASK], 10% -> a random word, 10%
unchanged; every chosen position is predicted. The data pipeline calls `mask_tokens` in its
collate so the batch carries `mlm_labels`; it lives in `text/` so that data/ need not import model/.
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
