"""Image decoders: the multi-scale coarse-to-fine decoder (sec. 3.3, eqs. 11-13) and the
single-scale one (AIAYN-image / ss_B16: the 2-layer MLP alone).

Multi-scale, with docs/method.md's argument reading (second SAM argument = queries):
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


class Unpool(nn.Module):
    """A coarse level's tokens -> one feature per token of the next finer level (2x the grid side):
    each coarse token is projected to 4 features, one per quadrant (a 2x2 transposed convolution
    over the token grid), so a fine token gets what its parent knows about ITS quarter."""

    def __init__(self, hidden: int):
        super().__init__()
        self.proj = nn.Linear(hidden, 4 * hidden)

    def forward(self, coarse: torch.Tensor) -> torch.Tensor:
        """coarse: (B, g*g, C) raster order -> (B, (2g)*(2g), C) raster order."""
        b, n, c = coarse.shape
        g = int(round(n ** 0.5))
        x = self.proj(coarse).view(b, g, g, 2, 2, c)            # (row, col, dy, dx)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(b, 4 * n, c)  # fine row = 2 row + dy


class MultiScaleDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inter = cfg.decoder_intermediate or cfg.intermediate
        self.up = Block(cfg, inter)
        self.mid = Block(cfg, inter)
        self.down = Block(cfg, inter)
        self.pixels = PixelHead(cfg)
        if cfg.decoder_top_down == "unpool":
            self.unpool_mid, self.unpool_down = Unpool(cfg.hidden), Unpool(cfg.hidden)

    def forward(self, f_levels: list[torch.Tensor]) -> torch.Tensor:
        """f_levels: [F_down (B, N_down, C), F_mid (B, N_mid, C), F_up (B, N_up, C)], finest first.
        Returns predicted finest-level patches (B, N_down, B*B)."""
        f_down, f_mid, f_up = f_levels
        d_up = self.up(f_up)
        if hasattr(self, "unpool_mid"):
            f_mid = f_mid + self.unpool_mid(d_up)
        d_mid = self.mid(f_mid, d_up)
        if hasattr(self, "unpool_down"):
            f_down = f_down + self.unpool_down(d_mid)
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
