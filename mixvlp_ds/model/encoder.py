"""The encoder SAM_e^{x N_e}: ONE stack of blocks whose weights image and text share (sec. 3.2)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mixvlp_ds.model.blocks import Block
from mixvlp_ds.model.config import ModelConfig


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.activation_checkpointing = cfg.activation_checkpointing

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, C) embedded tokens of ONE sequence kind (a text, or one pyramid level);
        mask: (B, N) bool, True = real token (None: no padding). Returns E: (B, N, C)."""
        for block in self.blocks:
            if self.activation_checkpointing and self.training and torch.is_grad_enabled():
                # Recompute each block's activations in backward: memory O(1 block) for compute +33%.
                x = checkpoint(block, x, None, mask, use_reentrant=False)
            else:
                x = block(x, None, mask)
        return x
