"""How many labels pre-training saves: fine-tune the pre-trained model and the same architecture
from random weights at several labelled budgets, and put the two curves side by side.

    cfg = load_config(FinetuneConfig, "configs/finetune_tiny.yaml", ["seed=0"])   # any overrides
    res = label_efficiency(cfg, model_dir, out, budgets=(5, 20, 100), subsets=3)
    print(efficiency_table(res))            # rows per budget, mean ± sd over subsets, both sides

A budget P is the P% patient subset of the fine-tuning rows (`data.subset`, the one the sweep and
fine-tuning use). Below 100% each of the `subsets` draws is another patient subset; at 100% there is
one subset, so the draws are fine-tuning seeds instead (from the config's `seed` up). Every run is
launchers/finetune.py's `cls` task with the given config; the AUC is its test mean over findings
(img_only and txt_only rows).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from mixvlp_ds import stage_progress

SIDES = {"img": "img_only", "txt": "txt_only"}


def _one_run(cfg) -> dict:
    """Mean test AUC per side and training rows of one fine-tuning, the FinetuneConfig `cfg`
    (skipped when its results exist)."""
    from mixvlp_ds.apps.finetune import run

    out = Path(cfg.output_dir)
    with stage_progress.part():   # one run: the next unit of a running stage's progress bar
        if not (out / "results.json").is_file():
            run(cfg)
    res = json.loads((out / "results.json").read_text())["results"]
    return {side: (res[row]["mean_auc"], res[row]["n_train"]) for side, row in SIDES.items() if row in res}


def label_efficiency(cfg, model_dir: Path, out: Path, budgets=(5.0, 20.0, 100.0), subsets: int = 3,
                     reuse: dict[str, Path] | None = None) -> list[dict]:
    """One entry per budget: {rows, percent, pretrained_img, pretrained_img_sd, scratch_img, ...}.
    `cfg`: the FinetuneConfig every run starts from (its `seed`: the first draw's). `reuse`:
    {"pretrained" | "scratch": a finished fine-tuning folder of this config at 100%, subset 0 and
    `cfg.seed`} stands in for that run."""
    inits = {"pretrained": str(model_dir), "scratch": ""}
    seed = cfg.seed
    table = []
    for p in budgets:
        draws: dict[str, list[dict]] = {}
        for name, init in inits.items():
            for k in range(subsets):
                subset_seed, run_seed = (0, seed + k) if p >= 100 else (k, seed)
                d = out / name / f"P{p:g}" / f"draw{k}"
                if p >= 100 and k == 0 and reuse and name in reuse:
                    d = reuse[name]
                tokenizer = cfg.tokenizer if init else str(model_dir / "tokenizer")
                draws.setdefault(name, []).append(_one_run(dataclasses.replace(
                    cfg, init=init, tokenizer=tokenizer, percent=float(p), subset_seed=subset_seed,
                    seed=run_seed, output_dir=str(d), plots=False)))
        entry: dict = {"percent": p}
        rows = [r["img"][1] for r in draws["pretrained"] if "img" in r]
        entry["rows"] = float(np.mean(rows)) if rows else None
        for name in inits:
            for side in SIDES:
                vals = [r[side][0] for r in draws[name] if side in r and r[side][0] is not None]
                entry[f"{name}_{side}"] = float(np.mean(vals)) if vals else None
                entry[f"{name}_{side}_sd"] = float(np.std(vals)) if vals else None
                entry[f"{name}_{side}_draws"] = vals
        table.append(entry)
    (out / "results.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(table, indent=1))
    plot(table, out / "label_efficiency.png")
    return table


def bands_apart(entry: dict, side: str) -> bool:
    """Pre-trained above random init with the two mean ± sd bands not overlapping."""
    p, s = entry[f"pretrained_{side}"], entry[f"scratch_{side}"]
    if p is None or s is None:
        return False
    return p - entry[f"pretrained_{side}_sd"] > s + entry[f"scratch_{side}_sd"]


def efficiency_table(table: list[dict]) -> str:
    from mixvlp_ds.apps.tables import markdown_table

    def cell(e, name, side):
        m, sd = e[f"{name}_{side}"], e[f"{name}_{side}_sd"]
        return "n/a" if m is None else f"{m:.3f} ± {sd:.3f}"

    rows = [[f"{e['percent']:g}%", f"{e['rows']:.0f}" if e["rows"] else "n/a",
             cell(e, "pretrained", "img"), cell(e, "scratch", "img"), cell(e, "pretrained", "txt"),
             cell(e, "scratch", "txt"),
             ", ".join(s for s in SIDES if bands_apart(e, s)) or "-"] for e in table]
    return markdown_table(["labels", "rows", "img_only pre-trained", "img_only random init",
                           "txt_only pre-trained", "txt_only random init", "pre-trained ahead (bands apart)"],
                          rows)


def plot(table: list[dict], path: Path) -> Path:
    """Mean AUC against labelled rows, one panel per side, pre-trained and random init with ± sd bands."""
    from mixvlp_ds.apps import plots

    plt = plots.plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    x = [e["rows"] or 0 for e in table]
    for ax, side in zip(axes, SIDES, strict=True):
        for name, colour in (("pretrained", "tab:blue"), ("scratch", "tab:grey")):
            m = np.array([e[f"{name}_{side}"] or np.nan for e in table])
            sd = np.array([e[f"{name}_{side}_sd"] or 0.0 for e in table])
            label = "pre-trained" if name == "pretrained" else "random init"
            ax.plot(x, m, marker="o", color=colour, label=label)
            ax.fill_between(x, m - sd, m + sd, color=colour, alpha=0.2)
        ax.set(xscale="log", xlabel="labelled rows", ylabel="mean AUC (test)", title=SIDES[side])
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
