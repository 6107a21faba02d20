"""Configuration of the pre-training input pipeline: the sources and how they are mixed.

    data:
      scenario: mixup2          # baseline | mixup1 | mixup2 | custom
      paired_percent: 1         # P: the paired subset, chosen by patient (subset.py)
      sources:
        - {name: mimic, uri: s3://bucket/shards/mimic, role: paired}
        - {name: nih, uri: shards/nih, role: image_only}

A scenario only fills in the per-source fields `rest` and `pair_with` (see `resolve_sources`);
`custom` leaves them as written, so any number of institutions can be mixed freely.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from mixvlp_ds.config import ConfigError
from mixvlp_ds.labels import LABEL_SPACES, is_label_space

Role = Literal["paired", "image_only", "text_only"]
Rest = Literal["drop", "repair", "split"]


@dataclass
class SourceSpec:
    """One institution's shards.

    name:        short name, used in logs and for `pair_with`
    uri:         a local folder or s3://bucket/prefix holding index.json
    role:        paired (image + own report) | image_only | text_only
    weight:      passes over this source per epoch: 1 reads every shard once, 2 twice (two
                 shuffles), 0.5 half of its shards (a different half each epoch)
    institution: the institution written into each tuple; defaults to `name`
    percent:     paired sources: P% of patients stay truly paired (default: DataConfig.paired_percent)
    rest:        paired sources, the records outside the P% subset: drop (baseline), repair (each
                 image coupled with a random report of `pair_with`, pair=0), split (image-only rows
                 and text-only rows)
    pair_with:   name of the source whose reports re-paired images of this source take ("" = own
                 source for paired sources; for image_only sources "" keeps image-only rows)
    split:       which split of the shards to read
    """

    name: str
    uri: str
    role: Role = "paired"
    weight: float = 1.0
    institution: str = ""
    percent: float | None = None
    rest: Rest = "drop"
    pair_with: str = ""
    split: str = "train"

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"source name {self.name!r} must be non-empty without '/'")
        if not self.uri:
            raise ConfigError(f"source {self.name}: uri is empty")
        if self.weight <= 0:
            raise ConfigError(f"source {self.name}: weight must be > 0, got {self.weight}")
        if self.percent is not None and not 0 <= self.percent <= 100:
            raise ConfigError(f"source {self.name}: percent must lie in [0, 100], got {self.percent}")
        if not self.institution:
            self.institution = self.name


@dataclass
class DataConfig:
    """The whole input side of pre-training (see docs/data.md)."""

    sources: list[SourceSpec] = field(default_factory=list)
    scenario: Literal["baseline", "mixup1", "mixup2", "custom"] = "baseline"
    paired_percent: float = 100.0
    subset_seed: int = 0            # the P% subset's seed: fine-tuning must use the same one
    negative_rate: float = 0.0      # share of truly paired records re-paired anyway (pair=0)
    batch_size: int = 64            # per rank
    num_workers: int = 2            # dataloader worker processes per rank (0 = in the main process)
    backend: Literal["wds", "streaming"] = "wds"
    shuffle_buffer: int = 1000      # tuples held for shuffling, per worker
    image_pool: int = 256           # images waiting for a random report, per worker
    report_pool: int = 1024         # reports to draw from, per institution and worker
    # the next three belong to the model in a run config (RunConfig fills them from model.*); set
    # them here only when the loader is used on its own
    mask_text_prob: float = 0.15
    max_text_len: int = 150
    image_size: int = 224
    mask_text: bool = True
    pad_to_max: bool = True         # fixed (B, max_text_len) shapes; False pads to the batch's longest
    label_space: str = "chexpert14"
    max_skip_fraction: float = 0.01  # abort when more than this share of records is skipped
    min_records_before_abort: int = 200
    skip_log: str = ""              # JSON lines of skipped records/shards ("" = log only)
    # resume on another world size or worker count: finish the saved epochs exactly (ledger.py),
    # restart the saved epoch, start the next one, or refuse
    on_world_size_change: Literal["exact", "restart_epoch", "next_epoch", "error"] = "exact"
    # resume with other sources or mixing (their positions mean nothing then): refuse, or start over
    on_stream_change: Literal["error", "restart_epoch", "next_epoch"] = "error"
    drop_last: bool = False         # a short last batch per worker and epoch: padded (False) or dropped
    prefetch_factor: int = 2        # batches each worker prepares ahead
    s3_retries: int = 5             # read attempts of one shard byte range before it counts as failed
    s3_backoff: float = 0.5         # seconds, doubled after each failed attempt
    cache_dir: str = ""             # streaming backend: local cache of remote MDS shards

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("data.sources is empty: name at least one shard folder")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"data.sources: duplicate names {names}")
        for s in self.sources:
            s.validate()
        if not 0 <= self.paired_percent <= 100:
            raise ConfigError(f"data.paired_percent must lie in [0, 100], got {self.paired_percent}")
        if not 0 <= self.negative_rate < 1:
            raise ConfigError(f"data.negative_rate must lie in [0, 1), got {self.negative_rate}")
        if not 0 <= self.max_skip_fraction <= 1:   # a share of the records: 1.5 would never abort
            raise ConfigError(f"data.max_skip_fraction: {self.max_skip_fraction} is not a fraction in [0, 1]")
        if not 0 <= self.mask_text_prob <= 1:
            raise ConfigError(f"data.mask_text_prob: {self.mask_text_prob} is not a fraction in [0, 1]")
        for name in ("min_records_before_abort", "s3_backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("s3_retries", "image_pool", "report_pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 1 or self.prefetch_factor < 1:
            raise ConfigError("data.batch_size >= 1, data.num_workers >= 0, data.shuffle_buffer >= 1, "
                              "data.prefetch_factor >= 1")
        if not 2 <= self.max_text_len <= 512:   # the model's bound (its position table)
            raise ConfigError(f"data.max_text_len must lie in [2, 512], got {self.max_text_len}")
        if not is_label_space(self.label_space):
            raise ConfigError(f"data.label_space {self.label_space!r} unknown; known {sorted(LABEL_SPACES)} "
                              f"or 'custom:name,name,...'")
        if self.image_size % 4:
            raise ConfigError(f"data.image_size {self.image_size} must be divisible by 4")
        resolve_sources(self)  # raises ConfigError when the scenario does not fit the sources


def resolve_sources(cfg: DataConfig) -> list[SourceSpec]:
    """The sources with the scenario's rules filled in: percent, rest, pair_with (copies).

    baseline: every paired source keeps P% of its patients; the rest is dropped.
    mixup1:   one paired source: P% paired, the rest re-paired with its own random reports.
    mixup2:   mixup1, plus every image of the image-only source(s) coupled with random reports
              of the paired source.
    custom:   fields as written; `percent` defaults to paired_percent.
    """
    out = [dataclasses.replace(s) for s in cfg.sources]
    for s in out:
        if s.percent is None:
            s.percent = cfg.paired_percent if s.role == "paired" else 100.0
    paired = [s for s in out if s.role == "paired"]
    others = [s for s in out if s.role != "paired"]
    if cfg.scenario == "custom":
        by_name = {s.name: s for s in out}
        for s in out:
            if s.pair_with and s.pair_with not in by_name:
                raise ConfigError(f"source {s.name}: pair_with {s.pair_with!r} names no source")
        return out
    if not paired:
        raise ConfigError(f"scenario {cfg.scenario} needs a paired source; roles are "
                          f"{[(s.name, s.role) for s in out]}")
    if cfg.scenario == "baseline":
        if others:
            raise ConfigError(f"scenario baseline uses paired sources only; {[s.name for s in others]} "
                              f"are not paired (use mixup2 or custom)")
        for s in paired:
            s.rest, s.pair_with = "drop", ""
        return out
    if len(paired) != 1:
        raise ConfigError(f"scenario {cfg.scenario} needs exactly one paired source, got "
                          f"{[s.name for s in paired]} (use custom)")
    main = paired[0]
    main.rest, main.pair_with = "repair", ""
    if cfg.scenario == "mixup1" and others:
        raise ConfigError(f"scenario mixup1 has one paired source only; {[s.name for s in others]} "
                          f"need mixup2 or custom")
    if cfg.scenario == "mixup2":
        images = [s for s in others if s.role == "image_only"]
        if not images or len(images) != len(others):
            raise ConfigError("scenario mixup2 needs one paired source and image-only source(s), got "
                              f"{[(s.name, s.role) for s in out]}")
        for s in images:
            s.pair_with = main.name
    return out
