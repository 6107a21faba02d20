"""RunConfig: everything one pre-training run needs, from one YAML file plus `key=value` overrides.

    model:                  # a ModelConfig; `preset`/`arch`/`image` expand ModelConfig.preset(...)
      preset: bert-base
      arch: uwox
      image: ms_B8
    data: {...}             # a DataConfig (mixvlp_ds.data.config); data.batch_size is PER RANK
    train: {...}            # a TrainConfig (below)
    tokenizer: runs/tok     # a tokenizer directory (mixvlp_ds.text.tokenizer)

The global batch is `train.batch_size` = data.batch_size x gradient accumulation x world size;
accumulation is derived, and a batch size that does not divide is an error naming the numbers.

One owner per value: the image size, the report length and the mask ratios belong to the model
(`model.image_size`, `model.max_text_len`, `model.text_mask_ratio`, `model.image_mask_ratio`), and
so does what a batch holds (`model.use_image`, `model.use_text`); the data pipeline is built from the
model config (`BatchSpec.for_model`), and writing them under `data:` is an error that names the
model's key (`DataConfig.OWNED_ELSEWHERE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from mixvlp_ds.config import ConfigError, apply_overrides, from_dict, read_file, to_dict
from mixvlp_ds.data.config import DataConfig, resolve_sources
from mixvlp_ds.model.config import ModelConfig


@dataclass
class TrainConfig:
    # keys of older configs and where their value lives now (mixvlp_ds.config.from_dict)
    OWNED_ELSEWHERE: ClassVar[dict[str, str]] = {
        "elastic": "train.checkpoint_format (elastic: world-size-free only, the default; deepspeed: "
                   "DeepSpeed's own files only; both)"}

    # optimisation (paper: Adam(W) at 1e-4, batch 64)
    lr: float = 1e-4                     # peak learning rate, reached after warmup_steps (AdamW)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's decay rates of the 1st and 2nd moments
    eps: float = 1e-8                    # AdamW's denominator term added to sqrt(2nd moment)
    weight_decay: float = 0.01           # AdamW's decoupled weight decay, per step times the lr
    batch_size: int = 64                 # global, over all ranks and accumulation steps
    warmup_steps: int = 1000             # optimizer steps of linear warm-up from 0 to lr
    decay: Literal["cosine", "linear", "constant"] = "cosine"  # lr after warm-up, down to min_lr_ratio
    min_lr_ratio: float = 0.0            # the decay ends at lr * min_lr_ratio
    clip_grad: float = 1.0               # gradient norm clipping (0 = off)
    steps: int = 100_000                 # optimizer steps of the whole run
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # "auto": what the DS config says
    compile: bool | None = None          # torch.compile the model through the engine; None: on CUDA only
    seed: int = 0                        # seeds init, data order/mixing/masks, dropout (P%: data.subset_seed)
    # robustness
    max_nonfinite_in_row: int = 20       # consecutive non-finite losses before the run stops
    # checkpoints
    output_dir: str = "runs/default"     # local folder: checkpoints, metrics.jsonl, the exported model
    ckpt_every: int = 1000               # steps; a checkpoint is also written at the end
    keep_last: int = 3                   # checkpoints kept, locally and on S3
    ckpt_uri: str = ""                   # s3://bucket/prefix: committed copies of the checkpoints
    resume: str = ""                     # "" | auto | s3://... | a local checkpoints directory
    upload_busy: Literal["wait", "skip"] = "wait"  # a checkpoint due while the last one writes or uploads
    checkpoint_format: Literal["elastic", "deepspeed", "both"] = "elastic"  # elastic loads into any layout
    async_save: bool = True              # the step waits for a host copy; files written behind it
    allow_batch_change: bool = False     # resume with another train.batch_size (the schedule's unit)
    record_log: bool = False             # <output_dir>/records/rank_<r>.jsonl: each micro-batch's records
    upload_timeout: float = 3600.0       # seconds of retrying before an upload is given up
    upload_backoff: float = 1.0          # first retry delay, doubled up to 60 s
    preflight_timeout: float = 60.0      # seconds the start-up S3 probe may retry before the run stops
    # logging
    log_every: int = 10                  # optimizer steps between log lines (metrics.jsonl, progress)
    progress: bool = True                # rich live progress on rank 0 (off: plain log lines)
    tensorboard: bool = True             # when the tensorboard package is installed
    peak_tflops: float = 0.0             # per device, for MFU; 0 = guess from the device name

    def validate(self) -> None:
        # (key, value, allowed, what) for every number of the schedule and the robustness settings
        rules = [("lr", self.lr, self.lr > 0, "> 0"), ("eps", self.eps, self.eps > 0, "> 0"),
                 ("betas", self.betas, all(0 <= b < 1 for b in self.betas), "in [0, 1)"),
                 ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
                 ("clip_grad", self.clip_grad, self.clip_grad >= 0, ">= 0 (0 = off)"),
                 ("warmup_steps", self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
                 ("min_lr_ratio", self.min_lr_ratio, 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
                 ("upload_timeout", self.upload_timeout, self.upload_timeout > 0, "> 0"),
                 ("upload_backoff", self.upload_backoff, self.upload_backoff > 0, "> 0"),
                 ("preflight_timeout", self.preflight_timeout, self.preflight_timeout > 0, "> 0"),
                 ("peak_tflops", self.peak_tflops, self.peak_tflops >= 0, ">= 0"),
                 ("max_nonfinite_in_row", self.max_nonfinite_in_row, self.max_nonfinite_in_row >= 1, ">= 1")]
        for name, value, ok, want in rules:
            values = value if isinstance(value, tuple) else (value,)
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"train.{name}={value} is not a finite number")
            if not ok:
                raise ConfigError(f"train.{name}={value} must be {want}")
        if self.batch_size < 1 or self.steps < 1:
            raise ConfigError(f"train.batch_size ({self.batch_size}) and train.steps ({self.steps}) must be "
                              f"positive")
        if self.ckpt_every < 1 or self.keep_last < 1 or self.log_every < 1:
            raise ConfigError("train.ckpt_every, train.keep_last and train.log_every must be >= 1")
        if self.resume == "auto" and not self.ckpt_uri:
            raise ConfigError("train.resume=auto resumes from train.ckpt_uri, which is empty")
        if self.ckpt_uri and not self.ckpt_uri.startswith("s3://"):
            raise ConfigError(f"train.ckpt_uri must be an s3:// URI, got {self.ckpt_uri!r}")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)   # the encoder; owns sizes and mask ratios
    data: DataConfig = field(default_factory=DataConfig)      # shards, sources, mixing, loader workers
    train: TrainConfig = field(default_factory=TrainConfig)   # optimisation, checkpoints, logging
    tokenizer: str = ""                  # tokenizer directory (python -m mixvlp_ds tokenizer train)
    name: str = ""                       # a label for the run in logs and tables (free text)

    def validate(self) -> None:
        m, d = self.model, self.data
        if not self.tokenizer:
            raise ConfigError("tokenizer: name a tokenizer directory "
                              "(python -m mixvlp_ds tokenizer train)")
        if m.fusion == "unit":
            # UNIT fuses image and report in every row; the step cannot refuse a row on the device
            lonely = [s.name for s in resolve_sources(d) if s.role == "text_only" or s.rest == "split"
                      or (s.role == "image_only" and not s.pair_with)]
            if lonely:
                raise ConfigError(f"model.fusion=unit needs an image and a report in every row, but sources "
                                  f"{lonely} give image-only or text-only rows: re-pair them (data.scenario="
                                  f"mixup2, or pair_with in a custom scenario) or use model.arch=uwox")

    def accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps so that micro x accum x world == train.batch_size."""
        per_step = self.data.batch_size * world_size
        if self.train.batch_size % per_step:
            raise ConfigError(f"train.batch_size={self.train.batch_size} is not a multiple of "
                              f"data.batch_size={self.data.batch_size} x world size {world_size}")
        return self.train.batch_size // per_step


def expand_model_preset(data: dict[str, Any]) -> dict[str, Any]:
    """`model: {preset: tiny, arch: uwox, image: ms_B8, hidden: 64}` -> the full ModelConfig fields."""
    model = dict(data.get("model") or {})
    if "preset" in model or "arch" in model or "image" in model:
        size = model.pop("preset", "bert-base")
        arch, image = model.pop("arch", None), model.pop("image", None)
        model = to_dict(ModelConfig.preset(size, arch=arch, image=image, **model))
    data["model"] = model
    return data


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """File, then overrides, then the model preset expansion; every section validated."""
    data = read_file(path) if path else {}
    apply_overrides(data, list(overrides or []))
    where = str(path or "config")
    try:
        run = from_dict(RunConfig, expand_model_preset(data), where=where)
    except ConfigError as e:   # a section's validate() names the key; the file goes in front
        if str(e).startswith(where):
            raise
        raise ConfigError(f"{where}: {e}") from None
    run.source = where   # not a field: for check_inputs' messages, never written to a run config
    return run


def check_inputs(run: RunConfig) -> None:
    """What the run config names exists and fits, before anything is built: the tokenizer directory
    (and its size against model.vocab_size), each source's shard index, and the shards' image size
    against model.image_size (for a model that reads images). A ConfigError `<file>: <key>: <problem>`
    otherwise (exit status 2), not a traceback from deep in the data pipeline."""
    from botocore.exceptions import ClientError

    from mixvlp_ds.data.reader import read_index
    from mixvlp_ds.shard.index import ShardIndexError
    from mixvlp_ds.text.tokenizer import load_tokenizer

    where = getattr(run, "source", "config")
    try:
        tokenizer = load_tokenizer(run.tokenizer)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: tokenizer: {e}") from None
    if len(tokenizer) > run.model.vocab_size:
        raise ConfigError(f"{where}: model.vocab_size: {run.model.vocab_size} is smaller than the "
                          f"{len(tokenizer)} tokens of tokenizer {run.tokenizer}")
    d = run.data
    for i, s in enumerate(d.sources):
        key = f"data.sources.{i}.uri"
        try:
            index = read_index(s.uri, d.s3_retries, d.s3_backoff)
        except (ShardIndexError, OSError, ValueError, ClientError) as e:   # ClientError: no such key/bucket
            raise ConfigError(f"{where}: {key}: source {s.name!r}: {e}") from None
        size = index.get("image_size")
        if size is not None and run.model.use_image and int(size) != run.model.image_size:
            raise ConfigError(f"{where}: {key}: the shards of source {s.name!r} have image_size {size}, "
                              f"model.image_size is {run.model.image_size}: set model.image_size={size} or "
                              f"write shards at {run.model.image_size} px")
