"""Prediction heads: 2-layer MLPs from features to words (L_txt) and to pixels (L_img)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixvlp_ds.model.config import ModelConfig


class WordHead(nn.Module):
    """BERT's masked-word head: dense -> GELU -> LayerNorm -> vocabulary logits.

    Names follow BERT's `cls.predictions` so a BertForMaskedLM checkpoint's head loads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., C) -> (..., vocab_size) logits."""
        return self.decoder(self.norm(F.gelu(self.dense(x))))


class PixelHead(nn.Module):
    """Decoder output of a finest-level patch -> its B*B pixels (scale [0, 1])."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.pixel_head_hidden or cfg.hidden
        self.fc1 = nn.Linear(cfg.hidden, hidden)
        self.fc2 = nn.Linear(hidden, cfg.patch_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, B*B)."""
        return self.fc2(F.gelu(self.fc1(x)))
