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
from typing import ClassVar, Literal

from mixvlp_ds.config import ConfigError
from mixvlp_ds.labels import LABEL_SPACES, is_label_space

Scenario = Literal["baseline", "mixup1", "mixup2", "custom"]
Role = Literal["paired", "image_only", "text_only"]
Rest = Literal["drop", "repair", "split"]
# resume on another world size or worker count: finish the saved epochs exactly (ledger.py),
# restart the saved epoch, start the next one, or refuse
WorldChange = Literal["exact", "restart_epoch", "next_epoch", "error"]
# resume with other sources or mixing (the saved positions mean nothing then): refuse, restart the
# saved epoch with the new data, or start the next one
StreamChange = Literal["error", "restart_epoch", "next_epoch"]


@dataclass
class SourceSpec:
    """One institution's shards.

    A `weight` of 1 reads every shard once per epoch, 2 twice (two shuffles), 0.5 half of its
    shards (a different half each epoch). `rest`, for the records of a paired source outside the P%
    subset: drop (baseline), repair (each image coupled with a random report of `pair_with`,
    pair=0), split (image-only rows and text-only rows). An empty `pair_with` means the source's
    own reports for a paired source, and keeps image-only rows for an image_only source.
    """

    name: str                       # short name, used in logs and by `pair_with`
    uri: str                        # a local folder or s3://bucket/prefix holding index.json
    role: Role = "paired"           # paired (image + own report) | image_only | text_only
    weight: float = 1.0             # passes over this source per epoch (see above)
    institution: str = ""           # the institution written into each tuple; "" = `name`
    percent: float | None = None    # paired: P% of patients truly paired; None: DataConfig.paired_percent
    rest: Rest = "drop"             # paired, outside the P% subset: drop | repair | split (see above)
    pair_with: str = ""             # the source whose reports re-paired images take (see above)
    split: str = "train"            # which split of the shards to read

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
    """The input side of pre-training: which shards, how they are mixed, read and laid out (see
    docs/data.md). What a batch holds, and the sizes and mask ratios, are the model's
    (model.use_image / use_text, image_size, max_text_len, text_mask_ratio, image_mask_ratio:
    `collate.BatchSpec.for_model`); a data section that sets one of OWNED_ELSEWHERE is refused."""

    # keys a data section may not hold, and where each value lives (mixvlp_ds.config.from_dict)
    OWNED_ELSEWHERE: ClassVar[dict[str, str]] = {"image_size": "model.image_size",
                                                 "max_text_len": "model.max_text_len",
                                                 "mask_text_prob": "model.text_mask_ratio"}

    sources: list[SourceSpec] = field(default_factory=list)   # the institutions' shards (SourceSpec)
    scenario: Scenario = "baseline"  # how the sources are mixed (resolve_sources)
    paired_percent: float = 100.0   # P: share of patients kept truly paired (subset.py), per paired source
    subset_seed: int = 0            # the P% subset's seed (in pretraining.json: fine-tuning reads it)
    negative_rate: float = 0.0      # share of truly paired records re-paired anyway (pair=0)
    batch_size: int = 64            # rows per batch, per rank
    num_workers: int = 2            # dataloader worker processes per rank (0 = in the main process)
    backend: Literal["wds", "streaming"] = "wds"  # wds: WebDataset tars; streaming: MDS shards
    shuffle_buffer: int = 1000      # tuples held for shuffling, per worker
    image_pool: int = 256           # images waiting for a random report, per worker
    report_pool: int = 1024         # reports to draw from, per institution and worker
    mask_text: bool = True          # BERT-mask the words of a model that reads text; False: unmasked
    pad_to_max: bool = True         # fixed (B, model.max_text_len) shapes; False pads to the batch's longest
    label_space: str = "chexpert14"  # the labels' space of every batch (mixvlp_ds.labels)
    max_skip_fraction: float = 0.01  # abort when more than this share of records is skipped
    min_records_before_abort: int = 200  # records seen before max_skip_fraction may abort
    skip_log: str = ""              # JSON lines of skipped records/shards ("" = log only)
    on_world_size_change: WorldChange = "exact"   # resume on another world or worker count (WorldChange)
    on_stream_change: StreamChange = "error"      # resume with other sources or mixing (StreamChange)
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
        for name in ("min_records_before_abort", "s3_backoff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("s3_retries", "image_pool", "report_pool"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 1 or self.num_workers < 0 or self.shuffle_buffer < 1 or self.prefetch_factor < 1:
            raise ConfigError("data.batch_size >= 1, data.num_workers >= 0, data.shuffle_buffer >= 1, "
                              "data.prefetch_factor >= 1")
        if not is_label_space(self.label_space):
            raise ConfigError(f"data.label_space {self.label_space!r} unknown; known {sorted(LABEL_SPACES)} "
                              f"or 'custom:name,name,...'")
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
