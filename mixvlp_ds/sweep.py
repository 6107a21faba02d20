"""The scenario sweep of the paper's Table 2: scenarios x labelled fractions P, each cell
pre-train (where the scenario has one) + fine-tune + evaluate. Resumable: a cell whose result.json
exists is skipped, and a cell whose pre-trained model exists skips pre-training.

    python -m mixvlp_ds.sweep --config configs/sweep_tiny.yaml [key=value ...]

Scenarios (METHOD.md "Data scenarios"):
    baseline1  no pre-training: fine-tune from random weights on the P% labelled subset
    baseline2  pre-train on the same P% paired subset (data.scenario=baseline), then fine-tune
    mixup1     pre-train on P% paired + the rest of that institution re-paired (data.scenario=mixup1)
    mixup2     mixup1 + every image of the image-only institution with a random report (mixup2)
Every cell fine-tunes on the SAME P% subset (same subset_seed as pre-training) and is scored by
the mean AUC of `metric_row` (img_only by default) on the evaluation split.

Output: <output_dir>/<scenario>/P<P>/{pretrain/, finetune/, result.json}, and
<output_dir>/table2.{md,json} plus table2.png (mean AUC vs P per scenario).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mixvlp_ds.apps import plots, tables
from mixvlp_ds.config import ConfigError, load_config

SCENARIOS = ("baseline1", "baseline2", "mixup1", "mixup2")
PRETRAIN_SCENARIO = {"baseline2": "baseline", "mixup1": "mixup1", "mixup2": "mixup2"}
REPO = Path(__file__).resolve().parents[1]


@dataclass
class SweepConfig:
    name: str = "sweep"
    output_dir: str = "runs/sweep"
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))
    fractions: list[float] = field(default_factory=lambda: [1, 2, 3, 5, 10, 30, 50, 90, 100])
    pretrain_config: str = "configs/tiny_cpu.yaml"   # a RunConfig YAML (launchers/pretrain.py)
    pretrain_overrides: list[str] = field(default_factory=list)
    deepspeed_config: str = ""                       # "" = pre-training's default
    finetune_config: str = ""                        # a FinetuneConfig YAML
    finetune_overrides: list[str] = field(default_factory=list)
    tokenizer: str = ""                              # for baseline1 (default: the pre-train config's)
    metric_row: str = "img_only"
    subset_seed: int = 0

    def validate(self) -> None:
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise ConfigError(f"scenarios {bad} unknown; known: {list(SCENARIOS)}")
        if not self.fractions or any(not 0 < p <= 100 for p in self.fractions):
            raise ConfigError(f"fractions {self.fractions} must lie in (0, 100]")


def cell_dir(cfg: SweepConfig, scenario: str, percent: float) -> Path:
    return Path(cfg.output_dir) / scenario / f"P{percent:g}"


def scenario_sources(cfg: SweepConfig, scenario: str) -> list[str]:
    """Baseline 2 and Mix-up 1 pre-train on the paired institution alone: an override that keeps
    only the paired sources of the pre-training config (Mix-up 2 keeps them all)."""
    from mixvlp_ds.config import apply_overrides, read_file

    if scenario == "mixup2":
        return []
    data = apply_overrides(read_file(cfg.pretrain_config), list(cfg.pretrain_overrides)).get("data", {})
    sources = data.get("sources") or []
    paired = [s for s in sources if s.get("role", "paired") == "paired"]
    if not paired:
        raise ConfigError(f"{cfg.pretrain_config}: {scenario} needs a paired source in data.sources")
    return [] if len(paired) == len(sources) else [f"data.sources={json.dumps(paired)}"]


def run_pretrain(cfg: SweepConfig, scenario: str, percent: float, out: Path) -> Path:
    """Pre-train one cell in a fresh process (DeepSpeed state never leaks between cells);
    returns the exported MixVLP directory <out>/model."""
    model_dir = out / "model"
    if (model_dir / "config.json").is_file():
        print(f"[sweep] {scenario} P{percent:g}: pre-trained model exists, reusing {model_dir}")
        return model_dir
    cmd = [sys.executable, str(REPO / "launchers" / "pretrain.py"), "--config", cfg.pretrain_config]
    if cfg.deepspeed_config:
        cmd += ["--deepspeed_config", cfg.deepspeed_config]
    cmd += [*cfg.pretrain_overrides, *scenario_sources(cfg, scenario),
            f"data.scenario={PRETRAIN_SCENARIO[scenario]}",
            f"data.paired_percent={percent:g}", f"data.subset_seed={cfg.subset_seed}",
            f"train.output_dir={out}", "train.progress=false"]
    print(f"[sweep] {scenario} P{percent:g}: pre-training: {' '.join(cmd)}", flush=True)
    env = dict(os.environ)
    env.setdefault("DS_ACCELERATOR", "cpu")
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"pre-training of {scenario} P{percent:g} failed (exit {proc.returncode}); "
                           f"its output is above, its files in {out}")
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"pre-training of {scenario} P{percent:g} exported no model to {model_dir}")
    return model_dir


def default_tokenizer(cfg: SweepConfig) -> str:
    if cfg.tokenizer:
        return cfg.tokenizer
    from mixvlp_ds.config import read_file
    tok = read_file(cfg.pretrain_config).get("tokenizer", "")
    for o in cfg.pretrain_overrides:
        if o.startswith("tokenizer="):
            tok = o.split("=", 1)[1]
    if not tok:
        raise ConfigError("baseline1 needs a tokenizer: set sweep `tokenizer` or one in the pre-train config")
    return tok


def run_cell(cfg: SweepConfig, scenario: str, percent: float) -> dict:
    from mixvlp_ds.apps.finetune import FinetuneConfig, run

    d = cell_dir(cfg, scenario, percent)
    done = d / "result.json"
    if done.is_file():
        print(f"[sweep] {scenario} P{percent:g}: done before, skipped")
        return json.loads(done.read_text())
    t0 = time.time()
    d.mkdir(parents=True, exist_ok=True)
    overrides = [*cfg.finetune_overrides, "task=cls", f"percent={percent:g}",
                 f"subset_seed={cfg.subset_seed}", f"output_dir={d / 'finetune'}"]
    if scenario == "baseline1":
        overrides += ['init=""', f"tokenizer={default_tokenizer(cfg)}"]
    else:
        overrides += [f"init={run_pretrain(cfg, scenario, percent, d / 'pretrain')}"]
    ft = run(load_config(FinetuneConfig, cfg.finetune_config or None, overrides))
    row = ft["results"].get(cfg.metric_row)
    if row is None:
        raise RuntimeError(f"{scenario} P{percent:g}: fine-tuning produced no {cfg.metric_row!r} row "
                           f"(rows: {sorted(ft['results'])})")
    result = {"scenario": scenario, "percent": percent, "metric_row": cfg.metric_row,
              "mean_auc": row["mean_auc"], "auc": row["auc"], "n_train": row["n_train"],
              "seconds": time.time() - t0}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(done)   # atomic: an interrupted cell is never taken for a finished one
    return result


def run_sweep(cfg: SweepConfig) -> dict:
    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict[str, float | None]] = {}
    for scenario in cfg.scenarios:
        for p in cfg.fractions:
            cells.setdefault(scenario, {})[str(p)] = run_cell(cfg, scenario, p)["mean_auc"]
            write_outputs(cfg, cells)   # the table grows as cells finish
    return cells


def write_outputs(cfg: SweepConfig, cells: dict) -> None:
    out = Path(cfg.output_dir)
    md = (f"Mean AUC ({cfg.metric_row}) by scenario and labelled fraction P\n\n"
          + tables.table2(cells, cfg.fractions))
    (out / "table2.md").write_text(md + "\n")
    (out / "table2.json").write_text(json.dumps({"metric_row": cfg.metric_row, "fractions": cfg.fractions,
                                                 "cells": cells}, indent=2))
    plots.label_fraction(cells, cfg.fractions, out / "table2.png", title=f"mean AUC ({cfg.metric_row}) vs P")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/sweep_*.yaml")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. fractions=[1,10,100]")
    args = p.parse_args(argv)
    cfg = load_config(SweepConfig, args.config, args.overrides)
    cells = run_sweep(cfg)
    print((Path(cfg.output_dir) / "table2.md").read_text())
    print(f"[sweep] plot: {Path(cfg.output_dir) / 'table2.png'}")
    return cells


if __name__ == "__main__":
    main()
