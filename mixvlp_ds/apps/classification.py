"""Classification: global average pooling + one linear layer on F_img and on F_txt, BCE over findings.

Image pooling (`pool`, opt-in; the paper is `mean`): `level_concat` flattens the F_img tokens of one
pyramid level (`pool_level`: 0 finest, 1 mid, 2 coarse) so that the linear layer sees where each
token is; `attention` is a learned attention pooling (one query + a per-position bias) over all
F_img tokens. F_txt is always averaged over its real tokens (docs/applications.md, "Pooling").

Table 1 rows (docs/method.md): UWOX encodes each modality alone -> `img_only` (head on pooled F_img of
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
POOLS = ("mean", "level_concat", "attention")
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


class ImagePool(nn.Module):
    """F_img tokens (B, N, C), levels finest first -> (B, out_dim) image feature.

    mean          GAP over all N tokens (the paper): C
    level_concat  tokens of level `level`, flattened in patch order, standardised: N_level * C
    attention     softmax(F q / sqrt(C) + b_pos) weighted sum of the tokens: C
    """

    def __init__(self, kind: str, hidden: int, patches_per_level: Sequence[int], level: int = 1):
        super().__init__()
        if kind not in POOLS:
            raise ValueError(f"pool {kind!r} is not one of {POOLS}")
        if kind == "level_concat" and not 0 <= level < len(patches_per_level):
            raise ValueError(f"pool_level={level}: the model has {len(patches_per_level)} image level(s)")
        self.kind, self.level, self.sizes = kind, level, tuple(patches_per_level)
        self.out_dim = hidden * (self.sizes[level] if kind == "level_concat" else 1)
        if kind == "level_concat":
            # Standardise each (patch, channel) feature (running statistics, no affine): the label
            # signal sits in small deviations under large per-channel offsets of the final LayerNorm;
            # a linear layer on the raw flattened tokens stays at the base rates (docs/applications.md).
            self.norm = nn.BatchNorm1d(self.out_dim, affine=False)
        if kind == "attention":
            self.query = nn.Parameter(torch.zeros(hidden))
            self.pos_bias = nn.Parameter(torch.zeros(sum(self.sizes)))   # zeros: starts as GAP

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return tokens.mean(dim=1)
        if self.kind == "level_concat":
            start = sum(self.sizes[:self.level])
            x = tokens[:, start:start + self.sizes[self.level]].flatten(1)
            if self.training and x.shape[0] == 1:   # a last batch of one row: no batch statistics
                return F.batch_norm(x, self.norm.running_mean, self.norm.running_var, training=False)
            return self.norm(x)
        scores = tokens @ self.query / tokens.shape[-1] ** 0.5 + self.pos_bias
        return (scores.softmax(dim=1)[:, :, None] * tokens).sum(1)


def image_pool(model, kind: str = "mean", level: int = 1) -> ImagePool:
    """The ImagePool for this model's token layout."""
    return ImagePool(kind, model.cfg.hidden, model.cfg.patches_per_level(), level)


class LinearProbe(nn.Module):
    """Pooled features (B, D) -> (B, K) finding logits: one linear layer, as in the paper.
    `pool` (an ImagePool) rides along so its weights (attention) train and save with the probe."""

    def __init__(self, in_dim: int, num_findings: int, pool: nn.Module | None = None):
        super().__init__()
        self.linear = nn.Linear(in_dim, num_findings)
        self.pool = pool

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled)


def pooled_features(model, batch: dict, side: str, pool: ImagePool | None = None) -> torch.Tensor:
    """Pooled F_img or F_txt of a batch, by the model's fusion ('img' | 'txt' | 'both').

    UWOX / none: each side encoded alone (UWOX works with one modality). UNIT: the pair is fused
    and the requested side's fused tokens are pooled. 'both' concatenates the two pooled vectors
    (image+text hash queries): (B, D_img + C). `pool` pools F_img (None = GAP)."""
    pool_img = pool if pool is not None else model.pool
    ids, att = batch["input_ids"], batch["attention_mask"]
    if model.cfg.fusion == "unit":
        f_img, f_txt = model.encode_pair(batch["pyramid"], ids, att)
        p_img, p_txt = pool_img(f_img), model.pool(f_txt, att.to(f_txt.device))
        return {"img": p_img, "txt": p_txt, "both": torch.cat([p_img, p_txt], -1)}[side]
    if side == "txt":
        return model.pooled_text(ids, att)
    p_img = pool_img(model.encode_image(batch["pyramid"]))
    return p_img if side == "img" else torch.cat([p_img, model.pooled_text(ids, att)], -1)


def feature_dim(model, side: str, pool: ImagePool | None = None) -> int:
    img = pool.out_dim if pool is not None else model.cfg.hidden
    return {"img": img, "txt": model.cfg.hidden, "both": img + model.cfg.hidden}[side]


def per_finding_logreg(x_train, y_train: np.ndarray, x_eval, **logreg) -> np.ndarray:
    """One scikit-learn logistic regression per finding on fixed features (the probes and the
    TF-IDF reference): (N_eval, K) decision values; 0 for a finding whose training labels hold one
    class only (nothing to learn; its AUC is n/a when the evaluation has one class too).
    y_train: (N, K) 0/1; `logreg`: LogisticRegression's arguments (C, class_weight, solver, ...)."""
    from sklearn.linear_model import LogisticRegression

    scores = np.zeros((x_eval.shape[0], y_train.shape[1]), np.float64)
    for k in range(y_train.shape[1]):
        if len(np.unique(y_train[:, k])) == 2:
            scores[:, k] = LogisticRegression(**logreg).fit(x_train, y_train[:, k]).decision_function(x_eval)
    return scores


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
