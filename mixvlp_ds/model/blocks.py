"""One BERT-style transformer block (the paper's SAM, Fig. 3a), for self- or cross-attention.

Post-LN like BERT, so a Hugging Face BERT layer's weights load one to one:
    a = Norm(q + Dropout(W_o Attn(W_q q, W_k kv, W_v kv)))
    y = Norm(a + Dropout(W_2 GELU(W_1 a)))
With kv = q it is self-attention. Attention runs through
`torch.nn.functional.scaled_dot_product_attention`, so GPUs use flash / memory-efficient kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixvlp_ds.model.config import ModelConfig


class Attention(nn.Module):
    """Multi-head attention of queries `q` over keys/values `kv` (BERT's names in comments)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)    # attention.self.query
        self.key = nn.Linear(cfg.hidden, cfg.hidden)      # attention.self.key
        self.value = nn.Linear(cfg.hidden, cfg.hidden)    # attention.self.value
        self.out = nn.Linear(cfg.hidden, cfg.hidden)      # attention.output.dense
        self.attention_dropout = cfg.attention_dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.heads, c // self.heads).transpose(1, 2)   # (B, H, N, d)

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, Nq, C), kv: (B, Nk, C), kv_mask: (B, Nk) bool, True = real token -> (B, Nq, C)."""
        b, nq, c = q.shape
        attn_mask = None if kv_mask is None else kv_mask[:, None, None, :]       # (B, 1, 1, Nk)
        y = F.scaled_dot_product_attention(
            self._split(self.query(q)), self._split(self.key(kv)), self._split(self.value(kv)),
            attn_mask=attn_mask, dropout_p=self.attention_dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, nq, c))


class Block(nn.Module):
    """SAM: attention + residual + LayerNorm, then feed-forward + residual + LayerNorm."""

    def __init__(self, cfg: ModelConfig, intermediate: int | None = None):
        super().__init__()
        inter = intermediate or cfg.intermediate
        self.attn = Attention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)   # attention.output.LayerNorm
        self.ffn_in = nn.Linear(cfg.hidden, inter)                          # intermediate.dense
        self.ffn_out = nn.Linear(inter, cfg.hidden)                         # output.dense
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)    # output.LayerNorm
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None,
                kv_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) queries; kv: (B, M, C) keys/values (None: self-attention, kv = x);
        kv_mask: (B, M) bool, True = real token. Returns (B, N, C)."""
        kv = x if kv is None else kv
        x = self.attn_norm(x + self.dropout(self.attn(x, kv, kv_mask)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))
