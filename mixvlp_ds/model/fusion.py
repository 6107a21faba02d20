"""Image-text fusion after the shared encoder (sec. 3.2, eqs. 3-9), read as docs/method.md pins it.

UNIT  (Fig. 3b): one block SAM_unit used both ways, queries from one modality and keys/values
      from the other: F_txt = Attn(q=E_txt, kv=E_img), F_img = Attn(q=E_img, kv=E_txt).
      Needs both modalities, at training and at test time.
UWOX  (Fig. 3c): one block SAM_uwox applied to each modality alone, F = SAM_uwox(E), plus the
      pair-matching head (Fig. 3d) on CoMat = E_txt E_img^T during pre-training.
none: F = E (the single-modality AIAYN baselines).
"""

from __future__ import annotations

import torch
from torch import nn

from mixvlp_ds.model.blocks import Block
from mixvlp_ds.model.config import ModelConfig


class UnitFusion(nn.Module):
    """Cross-attention both ways through ONE block (eqs. 3-4)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block = Block(cfg)

    def forward(self, e_txt: torch.Tensor, txt_mask: torch.Tensor,
                e_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """e_txt: (B, V, C), txt_mask: (B, V) bool, e_img: (B, U, C), the same B rows (pairs or
        re-paired tuples). Returns F_txt (B, V, C), F_img (B, U, C)."""
        if e_txt.shape[0] != e_img.shape[0]:
            raise ValueError(f"UNIT needs an image and a text in every row; got {e_txt.shape[0]} texts "
                             f"and {e_img.shape[0]} images. Use fusion='uwox' for single-modality rows.")
        f_txt = self.block(e_txt, e_img)                  # words attend to patches
        f_img = self.block(e_img, e_txt, txt_mask)        # patches attend to real words only
        return f_txt, f_img


class UwoxFusion(nn.Module):
    """One self-attention block shared by both modalities, no cross-talk (works on one alone)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.block = Block(cfg)

    def forward(self, e: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """e: (B, N, C), mask: (B, N) bool or None -> F: (B, N, C)."""
        return self.block(e, None, mask)


class PairMatchingHead(nn.Module):
    """Fig. 3d, eqs. 5-8: is (image, text) a true pair? Returns logits (sigmoid(logit) = I_pair).

    CoMat = E_txt E_img^T / sqrt(C)        (B, V, U)
    CoF_img = mean over the image axis      (B, V)  one value per word, 0 at padded words
    CoF_txt = mean over real words          (B, U)  one value per patch
    I_pair = sigmoid(W_co [CoF_txt ; CoF_img] + b_co)
    The word axis is padded to max_text_len so W_co has a fixed size; padded words contribute
    nothing, so what stands in padded positions never changes the result.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.max_text_len = cfg.max_text_len
        self.scale = cfg.hidden ** -0.5
        self.linear = nn.Linear(cfg.num_patches + cfg.max_text_len, 1)

    def forward(self, e_txt: torch.Tensor, txt_mask: torch.Tensor, e_img: torch.Tensor) -> torch.Tensor:
        """e_txt: (B, V, C), txt_mask: (B, V) bool, e_img: (B, U, C) -> logits (B,)."""
        real = txt_mask.to(e_txt.dtype)                                       # (B, V)
        comat = torch.bmm(e_txt, e_img.transpose(1, 2)) * self.scale          # (B, V, U)
        co_img = comat.mean(dim=2) * real                                     # (B, V)
        co_txt = (comat * real[:, :, None]).sum(dim=1) / real.sum(dim=1, keepdim=True)   # (B, U)
        co_img = nn.functional.pad(co_img, (0, self.max_text_len - co_img.shape[1]))
        return self.linear(torch.cat([co_txt, co_img], dim=1)).squeeze(1)

    def all_pairs(self, e_txt: torch.Tensor, txt_mask: torch.Tensor, e_img: torch.Tensor) -> torch.Tensor:
        """The logit of every image against every report: (B_img, B_txt), entry (i, j) equal to
        forward(e_txt[j], txt_mask[j], e_img[i]). Linearity does it without B^2 CoMats:
            W_co [CoF_txt ; CoF_img] = sum_u w_u e_u . mean(E_txt) + sum_v w_v e_v . mean(E_img)
        """
        return self.score(self.image_summary(e_img), self.text_summary(e_txt, txt_mask))

    def image_summary(self, e_img: torch.Tensor) -> torch.Tensor:
        """What the head needs of each image, (B_img, 2, C): [sum_u w_u e_u ; mean_u e_u]. Scoring
        many images against many reports (zero-shot, retrieval) keeps these, not E_img itself."""
        w_img = self.linear.weight[0, :e_img.shape[1]]
        img_w = torch.einsum("buc,u->bc", e_img, w_img)                          # (Bi, C)
        return torch.stack([img_w, e_img.mean(dim=1)], dim=1)

    def text_summary(self, e_txt: torch.Tensor, txt_mask: torch.Tensor) -> torch.Tensor:
        """What the head needs of each report, (B_txt, 2, C): [mean of real words ; sum_v w_v e_v]."""
        u = self.linear.weight.shape[1] - self.max_text_len
        real = txt_mask.to(e_txt.dtype)                                         # (Bt, V)
        w_txt = self.linear.weight[0, u:u + e_txt.shape[1]]
        mean_txt = (e_txt * real[:, :, None]).sum(dim=1) / real.sum(dim=1, keepdim=True)  # (Bt, C)
        txt_w = torch.einsum("bvc,bv->bc", e_txt, real * w_txt)                  # (Bt, C)
        return torch.stack([mean_txt, txt_w], dim=1)

    def score(self, image_summary: torch.Tensor, text_summary: torch.Tensor) -> torch.Tensor:
        """(B_img, 2, C) x (B_txt, 2, C) -> logits (B_img, B_txt)."""
        img_w, mean_img = image_summary[:, 0], image_summary[:, 1]
        mean_txt, txt_w = text_summary[:, 0], text_summary[:, 1]
        return (img_w @ mean_txt.T + mean_img @ txt_w.T) * self.scale + self.linear.bias
