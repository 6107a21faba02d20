"""Classification: global average pooling + one linear layer on F_img and on F_txt, BCE over findings.

Table 1 rows (METHOD.md): UWOX encodes each modality alone -> `img_only` (head on pooled F_img of
the image) and `txt_only` (head on pooled F_txt of the report); UNIT fuses the pair -> `img+txt`
(head on pooled F_img of the pair) and `txt+img` (head on pooled F_txt of the pair).

Label policy (documented choice, applied identically in training and evaluation):
- not mentioned (NaN / null in labels.json) -> 0, as CheXpert and NegBio consumers usually do:
  a report that does not mention a finding is read as "finding absent";
- uncertain (-1) -> `uncertain` policy: "zeros" (default, CheXpert's U-Zeros), "ones" (U-Ones), or
  "ignore" (NaN: left out of that finding's BCE and of its AUC).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")
ROWS = {"uwox": ("img_only", "txt_only"), "unit": ("img+txt", "txt+img"), "none": ("img_only", "txt_only")}


def apply_label_policy(labels: np.ndarray | torch.Tensor, uncertain: str = "zeros"):
    """(N, K) labels with 1 / 0 / -1 / NaN -> 1 / 0 (/ NaN for uncertain='ignore')."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain label policy {uncertain!r} is not one of {UNCERTAIN_POLICIES}")
    is_t = isinstance(labels, torch.Tensor)
    y = labels.detach().cpu().numpy().astype(np.float32) if is_t else np.asarray(labels, np.float32).copy()
    y[np.isnan(y)] = 0.0
    y[y == -1] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    return torch.from_numpy(y) if is_t else y


def binary_labels(labels, uncertain: str = "zeros") -> np.ndarray:
    """Label vectors for retrieval relevance: the policy, with 'ignore' read as 'zeros'."""
    return apply_label_policy(labels, "zeros" if uncertain == "ignore" else uncertain).astype(np.int64)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean BCE-with-logits over the (row, finding) entries whose target is not NaN."""
    keep = ~torch.isnan(targets)
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[keep], targets[keep])


class LinearProbe(nn.Module):
    """GAP output (B, C) -> (B, K) finding logits: one linear layer, as in the paper."""

    def __init__(self, in_dim: int, num_findings: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_findings)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


def pooled_features(model, batch: dict, side: str) -> torch.Tensor:
    """Pooled F_img or F_txt of a batch, by the model's fusion ('img' | 'txt' | 'both').

    UWOX / none: each side encoded alone (UWOX works with one modality). UNIT: the pair is fused
    and the requested side's fused tokens are pooled. 'both' concatenates the two pooled vectors
    (image+text hash queries): (B, 2C)."""
    ids, att = batch["input_ids"], batch["attention_mask"]
    if model.cfg.fusion == "unit":
        f_img, f_txt = model.encode_pair(batch["pyramid"], ids, att)
        p_img, p_txt = model.pool(f_img), model.pool(f_txt, att.to(f_txt.device))
        return {"img": p_img, "txt": p_txt, "both": torch.cat([p_img, p_txt], -1)}[side]
    if side == "img":
        return model.pooled_image(batch["pyramid"])
    if side == "txt":
        return model.pooled_text(ids, att)
    return torch.cat([model.pooled_image(batch["pyramid"]), model.pooled_text(ids, att)], -1)


def feature_dim(model, side: str) -> int:
    return model.cfg.hidden * (2 if side == "both" else 1)


def row_name(fusion: str, side: str) -> str:
    """'img' / 'txt' -> the Table 1 row name of this architecture."""
    img, txt = ROWS[fusion]
    return img if side == "img" else txt


def table1_rows(results: dict[str, dict], names: Sequence[str]) -> list[list[str]]:
    """Rows [name, mean, per-finding ...] from {row: {"auc": {finding: auc|None}, "mean_auc": x}}."""
    out = []
    for row, r in results.items():
        cells = ["n/a" if r["auc"].get(n) is None else f"{r['auc'][n]:.3f}" for n in names]
        out.append([row, "n/a" if r["mean_auc"] is None else f"{r['mean_auc']:.3f}", *cells])
    return out
