"""The rule labeller (`mixvlp_ds.text.labeller`) scored against NegBio's OpenI gold labels.

    python -m mixvlp_ds.apps.labeller_openi --labelers data/real/labelers --openi-dir data/real/openi_iu \\
        --out labeller_openi.json

Reads, in place from --openi-dir, indiana_reports.csv (FINDINGS + IMPRESSION of 3,851 reports)
and openi_gld_std14.csv (gold 0/1 labels, ChestX-ray14 findings) through the OpenI source's readers
(`mixvlp_ds.shard.sources.openi`); labels every report with the labeller's cxr14 rules; prints
precision / recall / F1 per finding, micro and macro F1 (a Markdown table), and writes them as JSON
with --out. An application of the labeller: text/ itself reads no dataset.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mixvlp_ds.labels import CXR14
from mixvlp_ds.shard.sources.openi import read_openi_gold, read_openi_reports
from mixvlp_ds.text.labeller import ReportLabeller


def score_openi(openi_dir: str | Path, labelers: str | Path | None = None,
                uncertain_as: int = 1) -> dict:
    """Precision/recall/F1 per CXR14 finding of the labeller vs the OpenI gold labels.

    A report counts as positive for a finding when the labeller says 1 (or -1 with uncertain_as=1).
    """
    lab = ReportLabeller("cxr14", labelers)
    texts, gold = read_openi_reports(openi_dir), read_openi_gold(openi_dir)
    ids = sorted(set(texts) & set(gold))
    counts = {n: [0, 0, 0] for n in CXR14}  # tp, fp, fn
    for i in ids:
        pred = lab.label(texts[i])
        for n in CXR14:
            p = pred[n] == 1 or (pred[n] == -1 and uncertain_as == 1)
            g = gold[i][n] == 1
            counts[n][0] += p and g
            counts[n][1] += p and not g
            counts[n][2] += g and not p
    per = {}
    for n, (tp, fp, fn) in counts.items():
        prec = tp / (tp + fp) if tp + fp else None
        rec = tp / (tp + fn) if tp + fn else None
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
        per[n] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    tp, fp, fn = (sum(c[j] for c in counts.values()) for j in range(3))
    f1s = [v["f1"] for v in per.values() if v["f1"] is not None and v["support"]]
    return {"reports": len(ids), "per_finding": per, "micro_f1": 2 * tp / (2 * tp + fp + fn),
            "macro_f1": sum(f1s) / len(f1s), "uncertain_as": uncertain_as}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def score_table(result: dict) -> str:
    lines = ["| finding | support | precision | recall | F1 |", "|---|---|---|---|---|"]
    for n, v in result["per_finding"].items():
        cells = [str(v["support"]), _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"])]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append(f"| micro | | | | {result['micro_f1']:.3f} |")
    lines.append(f"| macro (findings with support) | | | | {result['macro_f1']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds.apps.labeller_openi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--openi-dir", required=True,
                   help="OpenI folder with indiana_reports.csv and openi_gld_std14.csv")
    p.add_argument("--labelers", default=None, help="rule folder holding radtext/ (or $MIXVLP_LABELERS)")
    p.add_argument("--out", default=None, help="output JSON")
    args = p.parse_args(argv)
    res = score_openi(args.openi_dir, args.labelers)
    print(score_table(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
