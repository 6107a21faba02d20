"""Plots people would rather look at than tables (matplotlib, Agg backend, PNG files).

roc_curves:     one ROC curve per finding (n/a findings skipped), AUC in the legend
p_at_k_curves:  P@K vs K per query kind
label_fraction: mean AUC vs label fraction P per scenario (log x axis), Table 2 as a picture
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def roc_curves(labels: np.ndarray, scores: np.ndarray, names: Sequence[str], path: str | Path,
               title: str = "") -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for k, name in enumerate(names):
        keep = ~np.isnan(labels[:, k])
        y, s = labels[keep, k], scores[keep, k]
        if len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.2, label=f"{name} ({roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title or "ROC per finding")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def p_at_k_curves(results: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """results: {query kind: {"p_at_k": {K: x}}}."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for q, r in results.items():
        ks = sorted(int(k) for k in r["p_at_k"])
        ax.plot(ks, [r["p_at_k"].get(k, r["p_at_k"].get(str(k))) for k in ks], marker="o", label=q)
    ax.set(xscale="log", xlabel="K", ylabel="precision@K", title=title or "Hamming ranking P@K", ylim=(0, 1))
    ax.legend()
    return _save(fig, path)


def label_fraction(cells: dict[str, dict[str, float | None]], fractions: Sequence[float], path: str | Path,
                   title: str = "", errors: dict[str, dict[str, float]] | None = None) -> Path:
    """cells: {scenario: {str(P): mean AUC or None}}; errors: the same layout, error bar half-widths."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, v in cells.items():
        xs = [p for p in fractions if v.get(str(p)) is not None]
        err = [(errors or {}).get(s, {}).get(str(p), 0.0) for p in xs]
        ax.errorbar(xs, [v[str(p)] for p in xs], yerr=err if errors else None, marker="o", capsize=3, label=s)
    ax.set(xscale="log", xlabel="labelled fraction P (%)", ylabel="mean AUC", title=title or "mean AUC vs P")
    ax.legend()
    return _save(fig, path)
