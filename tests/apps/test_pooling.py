"""The opt-in image pooling of the fine-tuning heads: shapes, and the finetune -> evaluate round trip."""

import json

import pytest
import torch

import mixvlp_ds.programs.evaluate as evaluate
from mixvlp_ds.apps import finetune
from mixvlp_ds.apps.classification import ImagePool


def test_pool_shapes_and_level_slicing():
    sizes = (64, 16, 4)
    tokens = torch.randn(5, sum(sizes), 8)
    assert ImagePool("mean", 8, sizes)(tokens).shape == (5, 8)
    mid = ImagePool("level_concat", 8, sizes, level=1).eval()
    assert mid.out_dim == 16 * 8 and mid(tokens).shape == (5, 128)
    # Only the mid level's tokens matter: changing the finest level leaves the feature unchanged.
    other = tokens.clone()
    other[:, :64] += 3.0
    assert torch.equal(mid(tokens), mid(other))
    other[:, 70] += 3.0
    assert not torch.equal(mid(tokens), mid(other))
    mid.train()
    assert mid(tokens[:1]).shape == (1, 128)          # a last training batch of one row works
    att = ImagePool("attention", 8, sizes)
    assert torch.allclose(att(tokens), tokens.mean(1), atol=1e-6)   # zero init = GAP
    with pytest.raises(ValueError, match="pool_level"):
        ImagePool("level_concat", 8, sizes, level=3)


@pytest.mark.parametrize("pool", ["level_concat", "attention"])
def test_pool_round_trips_through_evaluate(apps_assets, tmp_path, pool):
    out = tmp_path / "ft"
    summary = finetune.main(["--task", "cls", "--init", apps_assets["model"],
                             f"shards={apps_assets['shards']}", "epochs=1", "sides=[img]", f"pool={pool}",
                             "pool_level=2", "plots=false", f"output_dir={out}"])
    res = summary["results"]["img_only"]
    info = json.loads((out / "models" / "img_only" / "head.json").read_text())
    assert info["pool"] == pool and info["pool_level"] == 2
    ev = evaluate.main(["--task", "cls", "--model", str(out / "models" / "img_only"), "--shards",
                        apps_assets["shards"], "--out", str(tmp_path / "ev")])
    assert ev["results"]["img_only"]["mean_auc"] == pytest.approx(res["mean_auc"], abs=1e-6)
    # The saved head really is the pooled one: a GAP head cannot load it.
    if pool == "level_concat":
        state = torch.load(out / "models" / "img_only" / "probe.pt")
        assert state["linear.weight"].shape[1] == 4 * 32      # coarse level: 4 tokens x hidden 32


def test_pool_in_retrieval_round_trips(apps_assets, tmp_path):
    out = tmp_path / "hash"
    summary = finetune.main(["--task", "retrieval", "--init", apps_assets["model"],
                             f"shards={apps_assets['shards']}", "epochs=1", "queries=[image+text]", "bits=16",
                             "pool=level_concat", "plots=false", f"output_dir={out}"])
    ev = evaluate.main(["--task", "retrieval", "--model", str(out / "models" / "image_text"), "--shards",
                        apps_assets["shards"], "--out", str(tmp_path / "ev")])
    assert ev["results"]["image+text"]["p_at_k"] == summary["results"]["image+text"]["p_at_k"]


def test_unknown_pool_is_a_config_error(apps_assets):
    from mixvlp_ds.config import ConfigError
    with pytest.raises(ConfigError, match="pool"):
        finetune.main([f"shards={apps_assets['shards']}", "pool=max", "--init", apps_assets["model"]])
