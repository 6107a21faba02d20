"""The real-image regeneration program end to end on a few real NIH radiographs (tiny model, two
pre-training steps), and its two references on hand-made images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mixvlp_ds.apps import nih_regen, regeneration
from mixvlp_ds.apps.regeneration import disjoint_masks
from tests.conftest import real_data_missing

TINY = ["model.image_size=32", "model.hidden=32", "model.layers=1", "model.heads=2",
        "model.intermediate=64", "data.batch_size=4", "train.batch_size=4", "train.steps=2",
        "train.warmup_steps=1", "data.shuffle_buffer=8", "data.image_pool=4", "data.report_pool=4"]


@pytest.fixture(scope="module")
def small_nih(shared_data, tmp_path_factory):
    """The NIH layout with 40 of the 621 real images (links, nothing copied)."""
    src = shared_data / "nih_cxr14"
    if not (src / "images_512").is_dir():
        real_data_missing()
    root = tmp_path_factory.mktemp("nih")
    (root / "images_512").mkdir()
    (root / "Data_Entry_2017_v2020.csv.gz").symlink_to(src / "Data_Entry_2017_v2020.csv.gz")
    for f in sorted((src / "images_512").glob("*.jpg"))[:40]:
        (root / "images_512" / f.name).symlink_to(f)
    return root


@pytest.fixture(scope="module")
def run(small_nih, tmp_path_factory):
    out = tmp_path_factory.mktemp("nih_regen") / "run"
    summary = nih_regen.main(["--nih-dir", str(small_nih), "--out", str(out), "--synthetic-num", "16",
                              "--grids", "2", *TINY])
    return out, summary


def test_pipeline_writes_results_and_grids(run):
    out, summary = run
    held = summary["held_out"]
    assert held["shared_patients"] == 0 and held["eval_images"] > 0
    assert held["train_images"] + held["eval_images"] <= 40
    assert summary["train_steps"] == 2 and math.isfinite(summary["final_loss"])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["results"]) == {"model", "coarse level upsampled", "neighbour mean"}
    for row in saved["results"].values():   # two steps of training: the model row is still poor
        assert row["n"] == held["eval_images"]
        assert 0 < row["mse"] < 255 ** 2
        assert 0 < row["psnr"] < 60
        assert -1 <= row["ssim"] <= 1
        assert 0 <= row["model_better_share"] <= 1
    # real radiographs are smooth: interpolating the intact half-resolution level is a strong reference
    assert saved["results"]["coarse level upsampled"]["psnr"] > 20
    assert "| model |" in (out / "results.md").read_text()
    grid = np.asarray(Image.open(saved["grids"][0]))
    assert grid.shape == (32, 3 * 32 + 8)
    compare = np.asarray(Image.open(saved["compare_grids"][0]))
    assert compare.shape == (64, 2 * (5 * 32 + 16))
    assert len(saved["grids"]) == len(saved["compare_grids"]) == min(2, held["eval_images"])


def test_held_out_check_refuses_an_overlap(run):
    _, summary = run
    nih_shards = summary["shards"]["nih"]["dir"]
    assert nih_regen.held_out_check(nih_shards, "val")["shared_patients"] == 0
    with pytest.raises(RuntimeError, match="also in train"):
        nih_regen.held_out_check(nih_shards, "train")


def test_neighbour_mean_fills_masked_patches_from_visible_neighbours():
    side, block = 4, 2
    patch_values = np.arange(16, dtype=np.float64).reshape(side, side) * 10
    img = np.kron(patch_values, np.ones((block, block))).astype(np.uint8)[None]
    masks = disjoint_masks(side * side, 0.15, torch.Generator().manual_seed(0))
    out = regeneration.neighbour_mean(img, masks, block)[0]
    # patch (1, 1) = 50: its neighbours in the pass that masks it, minus the masked ones
    p = next(i for i, m in enumerate(masks) if m[5])
    masked = masks[p].view(side, side).numpy()
    neigh = [patch_values[y, x] for y in (0, 1, 2) for x in (0, 1, 2)
             if (y, x) != (1, 1) and not masked[y, x]]
    assert out[2, 2] == out[3, 3] == round(np.mean(neigh))
    # a flat image is regenerated exactly
    flat = np.full((1, 8, 8), 77, np.uint8)
    assert (regeneration.neighbour_mean(flat, masks, block) == 77).all()


def test_coarse_upsampled_is_exact_on_flat_and_interpolates_between():
    assert (regeneration.coarse_upsampled(np.full((2, 4, 4), 90, np.uint8), 8) == 90).all()
    half = np.zeros((1, 2, 2), np.uint8)
    half[0, :, 1] = 200
    up = regeneration.coarse_upsampled(half, 4)[0]
    assert up[0, 0] == 0 and up[0, 3] == 200 and 0 < up[0, 1] < up[0, 2] < 200
