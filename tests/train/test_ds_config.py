"""DeepSpeed JSON "auto" filling from the run config, and contradictions named with both values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixvlp_ds.config import ConfigError
from mixvlp_ds.data.collate import BatchSpec
from mixvlp_ds.train.config import load_run_config
from mixvlp_ds.train.ds_config import fill_ds_config, load_ds_config
from mixvlp_ds.train.schedule import lr_factor

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.yaml"
Z2 = {"zero_optimization": {"stage": 2}}


def run(*overrides):
    return load_run_config(TINY, ["tokenizer=x", *overrides])


@pytest.mark.parametrize("name", ["zero2", "zero3", "zero2_offload", "fp16", "cpu"])
def test_every_shipped_config_fills(name):
    r = run("train.lr=3e-4", "train.batch_size=64", "data.batch_size=8", "train.clip_grad=0.5")
    ds = load_ds_config(REPO / "ds_configs" / f"{name}.json", r, world_size=4, device_type="cuda",
                        bf16_ok=True)
    assert ds["train_batch_size"] == 64 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 2  # 64 / (8 x 4)
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 3e-4 and ds["optimizer"]["params"]["betas"] == [0.9, 0.999]
    assert "auto" not in json.dumps(ds)
    assert ds["fp16"]["enabled"] == (name == "fp16")
    assert ds["bf16"]["enabled"] == (name in ("zero2", "zero3", "zero2_offload"))


def test_auto_precision_follows_the_accelerator_and_explicit_precision_contradiction():
    # "auto" is bf16 where the accelerator has it: DeepSpeed's CPU accelerator does
    ds = load_ds_config(REPO / "ds_configs" / "zero3.json", run(), 2, "cpu", bf16_ok=True)
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    ds = load_ds_config(REPO / "ds_configs" / "zero3.json", run(), 2, "cuda", bf16_ok=False)
    assert not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    with pytest.raises(ConfigError, match=r"bf16.enabled=True contradicts.*train.precision='fp32'"):
        load_ds_config(REPO / "ds_configs" / "zero2.json", run("train.precision=fp32"), 1, "cuda", True)
    ds = load_ds_config(REPO / "ds_configs" / "zero3.json", run("train.precision=bf16"), 1, "cpu", True)
    assert ds["bf16"]["enabled"]


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"fp16.json: fp16 is enabled, but this cpu device has no fp16 "
                                          r"training.*zero2.json \(bf16\) or ds_configs/cpu.json \(fp32\)"):
        load_ds_config(REPO / "ds_configs" / "fp16.json", run(), 1, "cpu", bf16_ok=True, fp16_ok=False)
    with pytest.raises(ConfigError, match="bf16 is enabled, but this cuda device has no bf16"):
        load_ds_config(REPO / "ds_configs" / "zero2.json", run(), 1, "cuda", bf16_ok=False)


def test_zero_stage_0_is_refused():
    with pytest.raises(ConfigError, match="zero_optimization.stage=0; the training loop needs ZeRO"):
        fill_ds_config({}, run(), world_size=2)


def test_contradictions_name_both_values():
    r = run("train.batch_size=64", "data.batch_size=8")
    with pytest.raises(ConfigError, match=r"train_batch_size=128 contradicts the run config "
                                          r"\(train.batch_size=64\)"):
        fill_ds_config({"train_batch_size": 128, **Z2}, r, world_size=8)
    with pytest.raises(ConfigError, match=r"lr=0.001 contradicts the run config \(train.lr=0.0001\)"):
        fill_ds_config({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, **Z2}, run("train.lr=1e-4"),
                       2)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=4"):
        fill_ds_config({"gradient_accumulation_steps": 4, **Z2}, r, world_size=8)
    with pytest.raises(ConfigError, match="not a multiple of data.batch_size=8 x world size 3"):
        fill_ds_config(dict(Z2), r, world_size=3)
    # agreeing explicit values are fine; a DeepSpeed scheduler gets the run's numbers
    ds = fill_ds_config({"train_batch_size": 64, "scheduler": {"type": "WarmupCosineLR", "params": {}}, **Z2},
                        run("train.batch_size=64", "train.warmup_steps=7", "train.steps=99"), world_size=8)
    assert ds["scheduler"]["params"] == {"warmup_num_steps": 7, "total_num_steps": 99}


def test_schedule_warmup_then_decay():
    f = [lr_factor(s, 10, 110, "cosine", 0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:], strict=False))
    assert f[110] == pytest.approx(0.1) and f[60] == pytest.approx(0.55)
    assert lr_factor(60, 10, 110, "linear") == pytest.approx(0.5)
    assert lr_factor(500, 10, 110, "constant") == 1.0


def test_every_run_config_loads_and_matches_the_paper():
    expected = {"uwox_ms_b8": 1029, "unit_ms_b8": 1029, "uwox_ms_b16": 336, "uwox_ms_b24": 189,
                "uwox_ms_b32": 84, "aiayn_image_ss_b16": 256}
    runs = ["tiny_cpu", "aiayn_text", "uwox_ms_b8_baseline2_p1", "uwox_ms_b8_mixup1_p1",
            "uwox_ms_b8_mixup2_p1",
            *expected]  # the pre-training configs (configs/ also holds fine-tuning ones)
    for name in runs:
        path = REPO / "configs" / f"{name}.yaml"
        r = load_run_config(path)
        spec = BatchSpec.for_model(r.model, r.data)   # the batches hold the sides the model reads
        assert (spec.images, spec.text) == (r.model.use_image, r.model.use_text), path
        if path.stem in expected:
            assert r.model.num_patches == expected[path.stem], path
        if path.stem != "tiny_cpu":
            assert (r.train.lr, r.train.batch_size, r.model.hidden, r.model.layers) == (1e-4, 64, 768, 12)
            assert r.model.text_mask_ratio == 0.15 and r.model.max_text_len == 150


def test_unknown_deepspeed_key_is_an_error_with_the_closest_name(tmp_path):
    bad = json.loads((REPO / "ds_configs" / "zero2.json").read_text())
    bad["zero_optimisation"] = bad.pop("zero_optimization")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=r"unknown top-level key 'zero_optimisation' \(did you mean "
                                          r"'zero_optimization'\?\); DeepSpeed would ignore it"):
        load_ds_config(tmp_path / "bad.json", run(), 1, "cpu", True)


@pytest.mark.parametrize("override,message", [
    ("train.warmup_steps=-5", r"train.warmup_steps=-5 must be >= 0"),
    ("train.clip_grad=-1", r"train.clip_grad=-1.0 must be >= 0"),
    ("train.lr=nan", r"train.lr=nan is not a finite number"),
    ("train.lr=inf", r"train.lr=inf is not a finite number"),
    ("train.weight_decay=-0.1", r"train.weight_decay=-0.1 must be >= 0"),
    ("train.betas=[0.9,1.5]", r"train.betas=\(0.9, 1.5\) must be in \[0, 1\)"),
    ("train.min_lr_ratio=2", r"train.min_lr_ratio=2.0 must be in \[0, 1\]"),
])
def test_bad_schedule_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        run(override)


def test_overrides_may_stand_anywhere_on_the_command_line():
    from mixvlp_ds.train.pretrain import parse_args

    args = parse_args(["train.steps=2", "--config", "x.yaml", "data.batch_size=4", "--deepspeed_config",
                       "ds.json", "train.lr=1e-3"])
    assert args.config == "x.yaml" and args.deepspeed_config == "ds.json"
    assert args.overrides == ["train.steps=2", "data.batch_size=4", "train.lr=1e-3"]


def test_the_model_owns_image_size_text_length_and_mask_ratio():
    r = run("model.image_size=64", "model.block_size=4", "model.max_text_len=96", "model.text_mask_ratio=0.2",
            "model.image_mask_ratio=0.3")
    spec = BatchSpec.for_model(r.model, r.data)
    got = (spec.image_size, spec.max_text_len, spec.text_mask_ratio, spec.patch_masking.ratio)
    assert got == (64, 96, 0.2, 0.3)
    for key, owner in [("image_size", "image_size"), ("max_text_len", "max_text_len"),
                       ("mask_text_prob", "text_mask_ratio")]:
        message = rf"\.data: {key} is not a key here: the value is model.{owner}, set it there"
        with pytest.raises(ConfigError, match=message):
            run(f"data.{key}=32")
