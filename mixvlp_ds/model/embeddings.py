"""Token embeddings of eqs. 1-2: `x_hat = Norm(W_x x + b_x) + Norm(W_p p + b_p)`.

Words: `x` is the word (an embedding row), `p` its index (a position-embedding row).
Patches: `x` is the flattened B x B patch with pixels in [0, 1], `p` its 6-value
[x_start, y_start, x_end, y_end, x_scale, y_scale] vector (4 values for a single scale).
With `cfg.embedding_norm` a final LayerNorm follows the sum (see ModelConfig for why).
"""

from __future__ import annotations

import torch
from torch import nn

from mixvlp_ds.model.config import ModelConfig


class TextEmbedding(nn.Module):
    """Eq. 1: (B, L) token ids -> (B, L, C)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_text_len, cfg.hidden)
        self.word_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.position_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.embedding_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        self.max_len = cfg.max_text_len

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: (B, L) long, L <= max_text_len -> (B, L, C)."""
        length = input_ids.shape[1]
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens is longer than max_text_len={self.max_len}")
        positions = torch.arange(length, device=input_ids.device)
        x = self.word_norm(self.word(input_ids)) + self.position_norm(self.position(positions))[None]
        return self.dropout(self.norm(x))


class PatchEmbedding(nn.Module):
    """Eq. 2: (B, N, B*B) patches with (N, 6) positions -> (B, N, C).

    One embedding for every pyramid level: the scale entries of the position vector tell the
    levels apart, as in the paper.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pixels = nn.Linear(cfg.patch_dim, cfg.hidden)
        self.position = nn.Linear(cfg.position_dim, cfg.hidden)
        self.pixel_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.position_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if cfg.embedding_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, patches: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """patches: (B, N, B*B) in [0, 1]; positions: (N, 6) -> (B, N, C)."""
        x = self.pixel_norm(self.pixels(patches)) + self.position_norm(self.position(positions))[None]
        return self.dropout(self.norm(x))
