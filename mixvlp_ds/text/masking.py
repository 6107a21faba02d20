"""BERT's masked-language-model masking of report tokens (sec. 3.1, docs/method.md "Objectives").

As BERT's `create_pretraining_data.py`: each row masks exactly
min(budget, max(1, round(prob * n))) of its n real (non-special) tokens, chosen at random;
80% -> [MASK], 10% -> a random word, 10% unchanged; every chosen position is predicted. A fixed
count per row (rather than a coin per token) bounds the masked words of a row by the budget
`masked_word_budget(max_len, prob)` (BERT's max_predictions_per_seq), so the model's word head
runs on a fixed (B, budget) set of positions. The data pipeline calls `mask_tokens` in its collate
so the batch carries `mlm_labels`; it lives in `text/` so that data/ need not import model/.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

IGNORE_INDEX = -100


def masked_word_budget(max_len: int, prob: float) -> int:
    """Most masked words in one row of `max_len` tokens: ceil(prob * max_len), at least 1. A row
    never reaches it by the rounding rule above (it has at most max_len - 2 real words)."""
    return max(1, math.ceil(prob * max_len))


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, *, mask_token_id: int,
                vocab_size: int, special_token_ids: Iterable[int], prob: float,
                generator: torch.Generator | None = None,
                budget: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of real tokens.

    input_ids, attention_mask: (B, L). Returns (masked_ids (B, L), mlm_labels (B, L)) where
    mlm_labels hold the original id at chosen positions and -100 elsewhere. Special tokens
    ([CLS], [SEP], [PAD], ...) are never chosen. prob: the model's model.text_mask_ratio (the
    caller passes it: this module owns no ratio). budget: most chosen per row (default
    masked_word_budget(L, prob))."""
    dev = input_ids.device
    budget = masked_word_budget(input_ids.shape[1], prob) if budget is None else budget
    candidates = attention_mask.bool().clone()
    for sid in special_token_ids:
        candidates &= input_ids != sid
    n_real = candidates.sum(dim=1, keepdim=True)
    want = torch.where(n_real > 0, (n_real.double() * prob).round().long().clamp(1, budget), 0)
    # a random order of each row's candidates (non-candidates last); the first `want` are chosen
    u = torch.rand(input_ids.shape, generator=generator, device=dev)
    rank = torch.where(candidates, u, 2.0).argsort(dim=1).argsort(dim=1)
    chosen = candidates & (rank < want)
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
