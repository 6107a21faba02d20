"""Markdown tables in the paper's layouts, from the result dicts the evaluation writes as JSON.

Table 1: one row per (model, row) with mean AUC and the AUC of each finding ("n/a" when the test
         set holds one class only).
Table 2: mean AUC per scenario (rows) and label fraction P (columns).
Table 3: P@1/5/10/50 per query kind (image / text / image+text).
Table 4(b): regeneration MSE / PSNR / SSIM per image variant (block size), with patch counts.
"""

from __future__ import annotations

from collections.abc import Sequence


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def table1(results: dict[str, dict], names: Sequence[str]) -> str:
    """results: {row name: {"mean_auc": x, "auc": {finding: x | None}, "ci": [lo, hi] (optional: the
    bootstrap 95% interval of the mean over evaluation rows)}}."""
    def mean(r):
        lo, hi = r.get("ci") or (None, None)
        return fmt(r["mean_auc"]) + (f" [{fmt(lo)}, {fmt(hi)}]" if lo is not None else "")
    rows = [[row, mean(r), *[r["auc"].get(n) for n in names]] for row, r in results.items()]
    return markdown_table(["row", "mean AUC [95% CI]", *names], rows)


def table2(cells: dict[str, dict[str, float | None]], fractions: Sequence[float]) -> str:
    """cells: {scenario: {str(P): mean AUC}} -> scenarios x P."""
    header = ["scenario", *[f"P{p:g}%" for p in fractions]]
    rows = [[s, *[v.get(str(p)) for p in fractions]] for s, v in cells.items()]
    return markdown_table(header, rows)


def table3(results: dict[str, dict], ks: Sequence[int] = (1, 5, 10, 50)) -> str:
    """results: {query kind: {"p_at_k": {K: x}}} (K keys may be int or str, from JSON)."""
    def get(p, k):
        return p.get(k, p.get(str(k)))
    rows = []
    for q, r in results.items():
        rows.append([q, *[get(r["p_at_k"], k) for k in ks]])
        if r.get("random_codes"):   # what codes that learnt nothing score on the same rows
            rows.append([f"{q}: random codes", *[get(r["random_codes"], k) for k in ks]])
    return markdown_table(["query", *[f"P@{k}" for k in ks]], rows)


def table4b(results: dict[str, dict]) -> str:
    """results: {image variant: {"patches": n, "mse": x, "psnr": x, "ssim": x, "n": images}}."""
    rows = [[v, r.get("patches"), r["mse"], r["psnr"], r["ssim"], r.get("n")] for v, r in results.items()]
    return markdown_table(["model", "patches", "MSE (0-255)", "PSNR (dB)", "SSIM", "images"], rows)
