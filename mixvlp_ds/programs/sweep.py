"""The scenario sweep of the paper's Table 2: scenarios x labelled fractions P, each cell
pre-train (where the scenario has one) + fine-tune + evaluate. Resumable: a cell whose result.json
exists is skipped, and a cell whose pre-trained model exists skips pre-training.

    python -m mixvlp_ds sweep --config configs/sweep_tiny.yaml [key=value ...]

Scenarios (docs/method.md, "Data sampler and scenarios"):
    baseline1  no pre-training: fine-tune from random weights on the P% labelled subset
    baseline2  pre-train on the same P% paired subset (data.scenario=baseline), then fine-tune
    mixup1     pre-train on P% paired + the rest of that institution re-paired (data.scenario=mixup1)
    mixup2     mixup1 + every image of the image-only institution with a random report (mixup2)
Every cell fine-tunes on the SAME P% subset as its pre-training and is scored by the mean AUC of
each of `metric_rows` (img_only by default; txt_only needs `sides` to include txt) on the
evaluation split. Each of `seeds` is a replicate: it draws its own P% subset (subset seed) and
seeds pre-training and fine-tuning; tables give the mean +- standard deviation over seeds, since
one seed's differences at small P are mostly which patients were drawn. `jobs` cells run at once
(each in its own process; on a CPU give each one thread: OMP_NUM_THREADS=1). With `probe: true`
each cell also fits logistic regressions on the frozen features of its starting encoder (same P%
subset): is the label signal in the pre-trained features at all, apart from how fine-tuning
fares with few labels? Turning it on later adds the probes to finished cells without retraining.

Output: <output_dir>/<scenario>/P<P>/seed<S>/{pretrain/, finetune/, result.json}, and
<output_dir>/table2.{md,json} plus table2_<row>.png (mean AUC vs P per scenario).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixvlp_ds.apps import plots, tables
from mixvlp_ds.config import ConfigError, load_config

SCENARIOS = ("baseline1", "baseline2", "mixup1", "mixup2")
PRETRAIN_SCENARIO = {"baseline2": "baseline", "mixup1": "mixup1", "mixup2": "mixup2"}


@dataclass
class SweepConfig:
    name: str = "sweep"                              # a label for the config's reader; not used in paths
    output_dir: str = "runs/sweep"                   # <scenario>/P<P>/seed<S>/ cells and the tables
    scenarios: list[str] = field(default_factory=lambda: list(SCENARIOS))  # Table 2's rows (SCENARIOS)
    fractions: list[float] = field(default_factory=lambda: [1, 2, 3, 5, 10, 30, 50, 90, 100])  # the P% values
    pretrain_config: str = "configs/tiny_cpu.yaml"   # a RunConfig YAML (launchers/pretrain.py)
    pretrain_overrides: list[str] = field(default_factory=list)   # key=value changes to it
    deepspeed_config: str = ""                       # "" = pre-training's default
    finetune_config: str = ""                        # a FinetuneConfig YAML
    finetune_overrides: list[str] = field(default_factory=list)   # key=value changes to it
    tokenizer: str = ""                              # for baseline1 (default: the pre-train config's)
    metric_rows: list[str] = field(default_factory=lambda: ["img_only"])  # fine-tuning rows scored per cell
    seeds: list[int] = field(default_factory=lambda: [0])   # replicates: P% subset + training seeds
    jobs: int = 1                                           # cells run at once, each in a process
    probe: bool = False        # also probe each cell's frozen starting encoder (apps/probe.py)

    def validate(self) -> None:
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise ConfigError(f"scenarios {bad} unknown; known: {list(SCENARIOS)}")
        if not self.fractions or any(not 0 < p <= 100 for p in self.fractions):
            raise ConfigError(f"fractions {self.fractions} must lie in (0, 100]")
        if not self.seeds or not self.metric_rows or self.jobs < 1:
            raise ConfigError("seeds and metric_rows must not be empty, and jobs must be >= 1")


def cell_dir(cfg: SweepConfig, scenario: str, percent: float, seed: int) -> Path:
    return Path(cfg.output_dir) / scenario / f"P{percent:g}" / f"seed{seed}"


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


def run_pretrain(cfg: SweepConfig, scenario: str, percent: float, seed: int, out: Path) -> Path:
    """Pre-train one cell (in this process: `pretrain_once`); returns the exported model <out>/model."""
    from mixvlp_ds.train.pretrain import pretrain_once

    overrides = [*cfg.pretrain_overrides, *scenario_sources(cfg, scenario),
                 f"data.scenario={PRETRAIN_SCENARIO[scenario]}", f"data.paired_percent={percent:g}",
                 f"data.subset_seed={seed}", f"train.seed={seed}", "train.progress=false"]
    return pretrain_once(cfg.pretrain_config, out, overrides, cfg.deepspeed_config,
                         log=lambda m: print(f"[sweep] {scenario} P{percent:g}: {m}", flush=True))[0]


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


def run_cell(cfg: SweepConfig, scenario: str, percent: float, seed: int) -> dict:
    from mixvlp_ds.apps.finetune import FinetuneConfig, run

    d = cell_dir(cfg, scenario, percent, seed)
    name = f"{scenario} P{percent:g} seed {seed}"
    done = d / "result.json"
    overrides = [*cfg.finetune_overrides, "task=cls", f"percent={percent:g}", f"subset_seed={seed}",
                 f"seed={seed}", f"output_dir={d / 'finetune'}"]
    if scenario == "baseline1":
        overrides += ['init=""', f"tokenizer={default_tokenizer(cfg)}"]
    if done.is_file():
        result = json.loads(done.read_text())
        if not cfg.probe or "probe" in result:
            print(f"[sweep] {name}: done before, skipped")
            return result
        print(f"[sweep] {name}: done before; adding its frozen-feature probes")
        if scenario != "baseline1":
            overrides += [f"init={d / 'pretrain' / 'model'}"]
    else:
        t0 = time.time()
        d.mkdir(parents=True, exist_ok=True)
        if scenario != "baseline1":
            overrides += [f"init={run_pretrain(cfg, scenario, percent, seed, d / 'pretrain')}"]
        ft = run(load_config(FinetuneConfig, cfg.finetune_config or None, overrides))
        missing = [r for r in cfg.metric_rows if r not in ft["results"]]
        if missing:
            raise RuntimeError(f"{name}: fine-tuning produced no {missing} row (rows: "
                               f"{sorted(ft['results'])}); metric_rows must match the fine-tuning's sides")
        rows = {r: {k: ft["results"][r][k] for k in ("mean_auc", "auc", "n_train")} for r in cfg.metric_rows}
        result = {"scenario": scenario, "percent": percent, "seed": seed, "rows": rows,
                  "seconds": time.time() - t0}
    if cfg.probe:
        result["probe"] = cell_probe(cfg, load_config(FinetuneConfig, cfg.finetune_config or None, overrides),
                                     percent, seed)
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(done)   # atomic: an interrupted cell is never taken for a finished one
    return result


PROBE_SIDES = {"img_only": "img", "txt_only": "txt"}


def cell_probe(cfg: SweepConfig, ft, percent: float, seed: int) -> dict[str, float | None]:
    """Frozen-feature probes of the cell's starting encoder (pre-trained, or Baseline 1's random
    init) on the same P% subset: is the label signal in the features, before any fine-tuning?
    The image probe reads what the fine-tuning head reads (GAP, or the level_concat level)."""
    import tempfile

    from mixvlp_ds.apps import probe
    from mixvlp_ds.apps.finetune import build_model

    with tempfile.TemporaryDirectory(prefix="mixvlp-probe-") as cache:
        model, tok, _ = build_model(ft, Path(cache))
    space = ft.label_space or None
    data = {side: (probe.labelled_rows(ft.shards, ft.train_split, side, space),
                   probe.labelled_rows(ft.eval_shards or ft.shards, ft.eval_split, side, space))
            for row, side in PROBE_SIDES.items() if row in cfg.metric_rows}
    kind = f"level{ft.pool_level}" if ft.pool == "level_concat" else "gap"
    return probe.probe_cell(model, tok, data, probe.PatientSubset(percent, seed), image_kind=kind)


def run_sweep(cfg: SweepConfig) -> dict:
    """Runs every (scenario, P, seed) cell not finished yet; returns {row: {scenario: {str(P):
    {"mean", "std", "per_seed"}}}} over the finished cells."""
    cfg.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    todo = [(s, p, seed) for seed in cfg.seeds for p in cfg.fractions for s in cfg.scenarios]
    results: dict[tuple, dict] = {}
    if cfg.jobs == 1:
        for key in todo:
            results[key] = run_cell(cfg, *key)
            write_outputs(cfg, results)   # the table grows as cells finish
    else:
        threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // cfg.jobs))
        with ProcessPoolExecutor(cfg.jobs, mp_context=mp.get_context("spawn"), initializer=_share_cores,
                                 initargs=(int(threads),)) as pool:
            futures = {pool.submit(run_cell, cfg, *key): key for key in todo}
            for f in as_completed(futures):
                results[futures[f]] = f.result()
                write_outputs(cfg, results)
    return summarise(cfg, results)


def _share_cores(threads: int) -> None:
    """Worker set-up: `jobs` cells share the cores (OpenMP oversubscription made tiny-model steps
    60x slower, see train/engine.py); a program's own environment, set in the worker it starts."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def summarise(cfg: SweepConfig, results: dict[tuple, dict]) -> dict:
    """Mean and standard deviation over seeds of each (row, scenario, P) that has results; the
    frozen-feature probes (sweep `probe: true`) appear as rows "<row>, frozen probe"."""
    def value(r: dict, row: str, probed: bool):
        return r.get("probe", {}).get(row) if probed else r["rows"][row]["mean_auc"]

    cells: dict[str, dict] = {}
    for probed in (False, True):
        for row in cfg.metric_rows:
            for s in cfg.scenarios:
                for p in cfg.fractions:
                    vals = [value(r, row, probed) for (s2, p2, _), r in results.items() if (s2, p2) == (s, p)]
                    vals = [v for v in vals if v is not None]
                    if vals:
                        name = f"{row}, frozen probe" if probed else row
                        cells.setdefault(name, {}).setdefault(s, {})[str(p)] = {
                            "mean": float(np.mean(vals)), "std": float(np.std(vals)), "per_seed": vals}
    return cells


def write_outputs(cfg: SweepConfig, results: dict[tuple, dict]) -> None:
    out = Path(cfg.output_dir)
    cells = summarise(cfg, results)
    parts = []
    for row, by_scenario in cells.items():
        shown = {s: {p: (f"{c['mean']:.3f} ± {c['std']:.3f} ({len(c['per_seed'])})" if len(cfg.seeds) > 1
                         else c["mean"]) for p, c in v.items()} for s, v in by_scenario.items()}
        parts.append(f"Mean AUC ({row}) by scenario and labelled fraction P"
                     + (" (mean ± sd over seeds (n))" if len(cfg.seeds) > 1 else "") + "\n\n"
                     + tables.table2(shown, cfg.fractions))
        png = out / f"table2_{row.replace(', frozen probe', '_probe')}.png"
        plots.label_fraction({s: {p: c["mean"] for p, c in v.items()} for s, v in by_scenario.items()},
                             cfg.fractions, png, title=f"mean AUC ({row}) vs P",
                             errors={s: {p: c["std"] for p, c in v.items()} for s, v in by_scenario.items()})
    (out / "table2.md").write_text("\n\n".join(parts) + "\n")
    (out / "table2.json").write_text(json.dumps({"metric_rows": cfg.metric_rows, "fractions": cfg.fractions,
                                                 "seeds": cfg.seeds, "cells": cells}, indent=2))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/sweep_*.yaml")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. fractions=[1,10,100]")
    args = p.parse_args(argv)
    cfg = load_config(SweepConfig, args.config, args.overrides)
    cells = run_sweep(cfg)
    print((Path(cfg.output_dir) / "table2.md").read_text())
    print(f"[sweep] plots: {Path(cfg.output_dir)}/table2_<row>.png")
    return cells


if __name__ == "__main__":
    from mixvlp_ds.status import run

    sys.exit(run(main))
