"""Image decoders: the multi-scale coarse-to-fine decoder (sec. 3.3, eqs. 11-13) and the
single-scale one (AIAYN-image / ss_B16: the 2-layer MLP alone).

Multi-scale, with METHOD.md's argument reading (second SAM argument = queries):
    D_up   = SAM_d,up(F_up)                         self-attention over the coarsest level
    D_mid  = SAM_d,mid(q=F_mid,  kv=D_up)           mid patches read the decoded coarse level
    D_down = SAM_d,down(q=F_down, kv=D_mid)         finest patches read the decoded mid level
    pixels = MLP(D_down)                            one B*B patch per finest-level token
Each step is its own block: the three have different query/key sets (self vs. cross).
"""

from __future__ import annotations

import torch
from torch import nn

from mixvlp_ds.model.blocks import Block
from mixvlp_ds.model.config import ModelConfig
from mixvlp_ds.model.heads import PixelHead


class MultiScaleDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inter = cfg.decoder_intermediate or cfg.intermediate
        self.up = Block(cfg, inter)
        self.mid = Block(cfg, inter)
        self.down = Block(cfg, inter)
        self.pixels = PixelHead(cfg)

    def forward(self, f_levels: list[torch.Tensor]) -> torch.Tensor:
        """f_levels: [F_down (B, N_down, C), F_mid (B, N_mid, C), F_up (B, N_up, C)], finest first.
        Returns predicted finest-level patches (B, N_down, B*B)."""
        f_down, f_mid, f_up = f_levels
        d_up = self.up(f_up)
        d_mid = self.mid(f_mid, d_up)
        d_down = self.down(f_down, d_mid)
        return self.pixels(d_down)


class SingleScaleDecoder(nn.Module):
    """The AIAYN baseline decoder: a 2-layer MLP on each patch feature."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.pixels = PixelHead(cfg)

    def forward(self, f_levels: list[torch.Tensor]) -> torch.Tensor:
        """f_levels: [F (B, N, C)] -> (B, N, B*B)."""
        return self.pixels(f_levels[0])
