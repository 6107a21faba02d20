"""The pre-training program.

    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/zero2.json --config configs/uwox_ms_b8.yaml
    torchrun --nproc_per_node 2 launchers/pretrain.py --deepspeed_config ds_configs/cpu.json --config ...
    python launchers/pretrain.py --config configs/tiny_cpu.yaml train.steps=20 [key=value ...]
    ... --ckpt-uri s3://bucket/runs/x            committed checkpoints on S3
    ... --resume auto | s3://bucket/runs/x | runs/x/checkpoints

Builds the parts (model, data pipeline, DeepSpeed engine: `build`, `build_engine`), puts them in a
Trainer (trainer.py: the stateful parts and the loop) and a CheckpointManager (checkpoint.py: when,
where and what to save, resume; checkpoint_store.py, checkpoint_upload.py and s3sync.py: the S3
commit protocol; attempt.py: this attempt's hold on the prefix), resumes when asked, trains for train.steps
optimizer steps, exports the fp32 weights, and ends with the final checkpoint committed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mixvlp_ds.config import ConfigError
from mixvlp_ds.train.config import RunConfig, check_inputs, load_run_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # option names must not be prefixes of torchrun's own (e.g. --start would clash with --start-method)
    p = argparse.ArgumentParser(prog="launchers/pretrain.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True,
                   help="run config YAML: a file, or a shipped one by name (configs/tiny_cpu.yaml, tiny_cpu)")
    p.add_argument("--deepspeed_config", "--deepspeed-config", default=None,
                   help="DeepSpeed JSON, a file or a shipped one (default: ds_configs/zero2.json on GPU, "
                        "ds_configs/cpu.json on CPU)")
    p.add_argument("--ckpt-uri", default=None, help="s3://bucket/prefix for committed checkpoints")
    p.add_argument("--resume", default=None, help="auto | s3://bucket/prefix | local checkpoints dir")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=3e-4 data.batch_size=8")
    # overrides may stand anywhere: before, between and after the options
    return p.parse_intermixed_args(argv)


def log0(info, msg: str) -> None:
    if info.is_main:
        print(msg, file=sys.stderr, flush=True)


def refuse_existing_run(out_dir: Path, resuming: bool, device: torch.device) -> None:
    """A fresh run (no --resume) into a folder that holds a run would append to its metrics and mix
    its checkpoints with the old ones: refuse, on every rank together (a collective)."""
    from mixvlp_ds.train.attempt import existing_run

    found = None if resuming else existing_run(out_dir)
    flag = torch.tensor([float(found is not None)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        where = found or "on another node"
        raise ConfigError(f"train.output_dir={out_dir} already holds a run ({where}); a fresh run "
                          f"there would mix with it. Resume it (--resume {out_dir / 'checkpoints'}, or "
                          f"--resume auto with its --ckpt-uri) or choose a new train.output_dir")


def build(run: RunConfig, info):
    """Tokenizer, model (same initial weights on every rank), data loader (which draws the word and
    patch masks the model's geometry asks for; pinned batches on CUDA)."""
    from mixvlp_ds.data import build_pretrain_loader
    from mixvlp_ds.model import MixVLP
    from mixvlp_ds.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(run.tokenizer)
    if len(tokenizer) > run.model.vocab_size:
        raise ValueError(f"tokenizer {run.tokenizer} has {len(tokenizer)} tokens > model.vocab_size="
                         f"{run.model.vocab_size}")
    torch.manual_seed(run.train.seed)  # identical initialisation everywhere (ZeRO-3 partitions it as is)
    model = MixVLP(run.model)
    loader = build_pretrain_loader(run.data, tokenizer, info.rank, info.world_size, seed=run.train.seed,
                                   model=run.model, pin_memory=info.device.type == "cuda")
    return tokenizer, model, loader


def precision_support(device: torch.device) -> tuple[bool, bool]:
    """(bf16, fp16) training support of DeepSpeed's accelerator for this device (CPU: bf16 only)."""
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    return bool(acc.is_bf16_supported()), bool(acc.is_fp16_supported())


def maybe_compile(engine, train_cfg, device: torch.device, log) -> bool:
    """torch.compile the model through DeepSpeed (train.compile; None = on CUDA). The step is
    shaped for one graph (static shapes, no host reads; tests/model/test_compile.py)."""
    on = device.type == "cuda" if train_cfg.compile is None else train_cfg.compile
    if on:
        engine.compile(compile_kwargs={"dynamic": False})
        log(f"[train] model compiled with torch.compile ({engine.is_compiled})")
    return on


def main(argv: list[str] | None = None) -> dict:
    """Set up the parts (model, data, engine, trainer, checkpoints, reporting), resume, train,
    export, and end with the final checkpoint committed (see the module doc for the commands)."""
    from mixvlp_ds.train.attempt import started_by_launcher, watch_launcher
    from mixvlp_ds.train.checkpoint import CheckpointManager
    from mixvlp_ds.train.ds_config import load_ds_config
    from mixvlp_ds.train.engine import (
        build_engine,
        check_resumed_hyperparameters,
        cpu_threads,
        init_distributed,
        standalone_env,
    )
    from mixvlp_ds.train.trainer import Trainer

    args = parse_args(argv)
    overrides = list(args.overrides)
    if args.ckpt_uri is not None:
        overrides.append(f"train.ckpt_uri={args.ckpt_uri}")
    if args.resume is not None:
        overrides.append(f"train.resume={args.resume}")
    run = load_run_config(args.config, overrides)
    check_inputs(run)  # tokenizer, shards, image size: a ConfigError naming the key, not a traceback
    os.environ.update(standalone_env())  # the program's environment: rank 0 of 1 without a launcher
    info = init_distributed()
    if info.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # the variable, when set, wins
        torch.set_num_threads(cpu_threads(info.local_world_size))
    if started_by_launcher():
        watch_launcher(lambda m: print(f"[rank {info.rank}] {m}", file=sys.stderr, flush=True))
    t = run.train
    refuse_existing_run(Path(t.output_dir), resuming=bool(t.resume), device=info.device)
    default_ds = "ds_configs/cpu.json" if info.device.type == "cpu" else "ds_configs/zero2.json"
    ds_path = args.deepspeed_config or default_ds  # a file, or a shipped config (mixvlp_ds.shipped)
    ds_config = load_ds_config(ds_path, run, info.world_size, info.device.type,
                               *precision_support(info.device))

    tokenizer, model, loader = build(run, info)
    engine = build_engine(model, ds_config, t)
    compiled = maybe_compile(engine, t, info.device, lambda m: log0(info, m))
    trainer = Trainer(run, info, engine, loader)
    # S3 first: fail fast when the prefix is unusable, and take it from any older attempt before resuming
    checkpoints = CheckpointManager(run, info, ds_config, states=trainer)
    if checkpoints.resume():  # the optimizer / schedule state must not override the run config
        check_resumed_hyperparameters(engine, t)
    # reporting opens after the resume: the progress display starts at the resumed step
    sink = open_reporting(run, info, ds_config, trainer, compiled) if info.is_main else None
    trainer.sink, trainer.checkpoints = sink, checkpoints
    try:
        trainer.fit()
        export_model(engine, ds_config, Path(t.output_dir) / "model", tokenizer, info, run.data)
    finally:
        if sink is not None:
            sink.close()
        checkpoints.wait_for_upload()
    checkpoints.finish(trainer.state.step)
    up = checkpoints.uploader
    return {"step": trainer.state.step, "skipped_nonfinite": trainer.state.skipped_nonfinite,
            "output_dir": t.output_dir, "upload_errors": list(up.errors) if up else [],
            "committed": list(up.committed) if up else []}


def open_reporting(run, info, ds_config: dict, trainer, compiled: bool):
    """Rank 0: the resolved config beside the run, the metrics sink with its progress display, and
    the one-line banner of what is about to train."""
    from mixvlp_ds.model import flops_per_sample
    from mixvlp_ds.train.engine import peak_flops
    from mixvlp_ds.train.metrics import MetricsSink
    from mixvlp_ds.train.progress import Progress

    t, out_dir = run.train, Path(run.train.output_dir)
    precision = "bf16" if ds_config["bf16"]["enabled"] else "fp16" if ds_config["fp16"]["enabled"] else "fp32"
    resolved = {"run": _plain(run), "deepspeed": ds_config}
    (out_dir / "run_config.json").write_text(json.dumps(resolved, indent=1))
    progress = Progress(t.steps, t.log_every, live=None if t.progress else False,
                        start_step=trainer.state.step)
    sink = MetricsSink(out_dir, flops_per_sample(run.model),
                       peak_flops(info.device, precision, t.peak_tflops), info.world_size, progress,
                       t.tensorboard)
    mode = "compiled" if compiled else "eager"
    log0(info, f"[train] {info.world_size} rank(s) on {info.device.type}, {precision}, ZeRO stage "
               f"{ds_config.get('zero_optimization', {}).get('stage', 0)}, {mode}, "
               f"global batch {t.batch_size} = {run.data.batch_size} x "
               f"{trainer.engine.gradient_accumulation_steps()} accum x {info.world_size}, "
               f"steps {trainer.state.step} -> {t.steps}")
    return sink


def cli(argv: list[str] | None = None) -> int:
    """`launchers/pretrain.py` / `mixvlp-pretrain`: main() with an exit status (docs/training.md): 0
    done, 2 a configuration error, 3 a checkpoint store failure, each reported as one line."""
    from mixvlp_ds.train.attempt import NotCommittedError
    from mixvlp_ds.train.checkpoint_store import NoUsableCheckpointError
    from mixvlp_ds.train.s3sync import FencedError, PreflightError

    try:
        main(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except (NotCommittedError, NoUsableCheckpointError, FencedError, PreflightError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 3
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


def pretrain_once(config: str | Path, out_dir: str | Path, overrides: list[str],
                  deepspeed_config: str = "", log=print) -> tuple[Path, str]:
    """The applications' one way to pre-train (quickstart, sweep, nih_regen), in this process:
    `<out_dir>/model` when an earlier call exported it already; otherwise main() with the config,
    the overrides and train.output_dir=out_dir, after removing an unfinished earlier attempt (said
    so). Returns (the exported model directory, the equivalent command line)."""
    import shutil

    out_dir = Path(out_dir)
    argv = ["--config", str(config), *(["--deepspeed_config", deepspeed_config] if deepspeed_config else []),
            *overrides, f"train.output_dir={out_dir}"]
    command = "python launchers/pretrain.py " + " ".join(argv)
    model_dir = out_dir / "model"
    if (model_dir / "config.json").is_file():
        log(f"{model_dir}: already pre-trained, reused")
        return model_dir, command
    if out_dir.exists():  # an earlier attempt stopped before exporting: start over
        log(f"removing the unfinished pre-training in {out_dir}")
        shutil.rmtree(out_dir)
    log(f"pre-training: {command}")
    main(argv)
    if not (model_dir / "config.json").is_file():
        raise RuntimeError(f"pre-training exported no model to {model_dir}")
    return model_dir, command


def console() -> None:
    """The `mixvlp-pretrain` console script."""
    exit_now(cli(sys.argv[1:]))


def exit_now(status: int) -> None:
    """The launcher's way out of a finished run: everything is written, flushed and uploaded by now,
    so leave without the interpreter's teardown, where the comm libraries' native threads were seen
    to abort a finished rank now and then ("terminate called without an active exception", ZeRO-3
    on 2 CPU ranks), which the launcher reports as a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def export_model(engine, ds_config: dict, directory: Path, tokenizer, info, data=None) -> None:
    """The final weights as a plain fp32 MixVLP directory (from_pretrained) for fine-tuning: the
    optimizer's fp32 master weights, not the bf16/fp16 copies the engine computes with. Gathering
    them is a collective (every rank enters, ZeRO-3 partitions included); rank 0 writes. `data`
    (the run's DataConfig): its P% paired subset goes to pretraining.json, for fine-tuning."""
    from deepspeed.utils import safe_get_full_fp32_param

    from mixvlp_ds.data.config import resolve_sources

    state = {}
    for name, p in engine.module.named_parameters():
        full = safe_get_full_fp32_param(p)
        if info.is_main:
            state[name] = (p if full is None else full).detach().float().cpu()
    if info.is_main:
        facts = None if data is None else {"subset_seed": data.subset_seed, "paired_percent": {
            s.name: s.percent for s in resolve_sources(data) if s.role == "paired"}}
        engine.module.save_pretrained(directory, tokenizer, state=state, pretraining=facts)
    dist.barrier()


def _plain(run: RunConfig) -> dict:
    from mixvlp_ds.config import to_dict

    return to_dict(run)


if __name__ == "__main__":  # python -m mixvlp_ds.train.pretrain (what the sweep and an installed package run)
    exit_now(cli(sys.argv[1:]))
