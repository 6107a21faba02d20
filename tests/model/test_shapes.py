"""Shapes, patch counts of docs/method.md's table ("Inputs"), the shared encoder and the handling of rows."""

import pytest
import torch

from mixvlp_ds.config import ConfigError
from mixvlp_ds.model import IMAGE_VARIANTS, MixVLP, ModelConfig
from mixvlp_ds.model.patches import patch_positions, patchify, unpatchify

TABLE = {  # docs/method.md, "Inputs" / paper Table 4(b)
    "ms_B8": ((784, 196, 49), 1029),
    "ms_B16": ((256, 64, 16), 336),
    "ms_B24": ((144, 36, 9), 189),
    "ms_B32": ((64, 16, 4), 84),
    "ss_B16": ((256,), 256),
}


@pytest.mark.parametrize("variant", sorted(TABLE))
def test_patch_counts_of_every_row(variant):
    cfg = ModelConfig.preset("tiny", image=variant, max_text_len=8)
    per_level, total = TABLE[variant]
    assert cfg.patches_per_level() == per_level
    assert cfg.num_patches == total
    # the patchified pyramid has exactly those tokens, and encode_image returns them
    model = MixVLP(cfg).eval()
    s = cfg.image_size
    pyramid = [torch.randint(0, 256, (1, n, n), dtype=torch.uint8) for n in (s, s // 2, s // 4)]
    levels = model.image_levels(pyramid)
    assert [x.shape[1] for x in levels] == list(per_level)
    assert all(x.shape[2] == cfg.block_size ** 2 for x in levels)
    with torch.no_grad():
        assert model.encode_image(pyramid).shape == (1, total, cfg.hidden)
        assert model.regenerate(pyramid, torch.zeros(1, per_level[0], dtype=torch.bool)).shape == (1, s, s)


def test_variants_cover_the_table():
    assert set(IMAGE_VARIANTS) == set(TABLE)


def test_patchify_round_trip_and_positions():
    img = torch.rand(2, 16, 16)
    p = patchify(img, 4)
    assert p.shape == (2, 16, 16)
    assert torch.equal(p[0, 1], img[0, 0:4, 4:8].reshape(-1))       # raster order: 2nd patch is right of 1st
    assert torch.equal(unpatchify(p, 4), img)
    pos = patch_positions(16, 4, 0.5)
    assert pos.shape == (16, 6)
    assert pos[1].tolist() == [0.25, 0.0, 0.5, 0.25, 0.5, 0.5]
    assert patch_positions(16, 4, None).shape == (16, 4)


def test_bert_base_sizes():
    cfg = ModelConfig.preset("bert-base")
    with torch.device("meta"):
        model = MixVLP(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 161.0e6 < n < 162.5e6          # the reference implementation of this architecture: 161.7M
    assert (cfg.layers, cfg.hidden, cfg.heads, cfg.max_text_len) == (12, 768, 12, 150)


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig.preset("tiny", hidden=30, heads=4)
    with pytest.raises(ConfigError, match="fusion"):
        ModelConfig.preset("tiny", use_image=False)          # uwox without images
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.preset("tiny", hiden=3)


def test_one_encoder_receives_image_and_text_gradients(batch_factory):
    cfg = ModelConfig.preset("tiny")
    model = MixVLP(cfg)
    names = [n for n, _ in model.named_parameters() if n.startswith("encoder.")]
    assert names and not any("text" in n or "image" in n for n in names)   # one stack, no per-modality copy
    batch = batch_factory(cfg, 4)
    w = model.encoder.blocks[0].attn.query.weight
    for only in ("image", "text"):
        model.zero_grad()
        b = dict(batch, has_image=torch.tensor([only == "image"] * 4),
                 has_text=torch.tensor([only == "text"] * 4))
        out = model(b)
        assert (out["n_img"] > 0) == (only == "image") and (out["n_txt"] > 0) == (only == "text")
        out["loss"].backward()
        assert w.grad is not None and w.grad.abs().sum() > 0, only


def test_mixed_rows_and_counts(batch_factory):
    cfg = ModelConfig.preset("tiny")
    model = MixVLP(cfg)
    batch = batch_factory(cfg, 4, has_image=[True, False, True, True], has_text=[True, True, False, True])
    out = model(batch)
    k = round(cfg.image_mask_ratio * cfg.patches_per_level()[0])
    assert out["n_img"] == 3 * k                      # only rows with images, k masked finest patches each
    assert out["n_co"] == 2                           # only rows with both sides
    assert out["n_txt"] == int((batch["mlm_labels"][[0, 1, 3]] != -100).sum())
    assert torch.isfinite(out["loss"])
    assert set(out) == {"loss", "L_txt", "L_img", "L_co", "n_txt", "n_img", "n_co"}


def test_unit_rows_without_a_side_carry_no_loss(batch_factory):
    """The step has static shapes, so UNIT cannot refuse a row on the device (that is a host read);
    the run config refuses sources that give such rows (tests/test_config.py), and a row that
    lacks a side anyway (padding) adds nothing to the loss of the side it lacks."""
    cfg = ModelConfig.preset("tiny", arch="unit")
    torch.manual_seed(0)
    model = MixVLP(cfg)
    full = batch_factory(cfg, 4)
    keep = torch.tensor([True, True, False, True])
    no_text = dict(full, has_text=keep, mlm_labels=torch.where(keep[:, None], full["mlm_labels"], -100))
    a, b = model(full), model(no_text)
    assert a["n_co"] == 0 and a["n_img"] > 0 and a["n_txt"] > b["n_txt"] > 0
    assert a["n_img"] == b["n_img"] and torch.equal(a["L_img"], b["L_img"])
    with pytest.raises(ValueError, match="UNIT"):
        model.encode_image(full["pyramid"])
    f_img, f_txt = model.encode_pair(full["pyramid"], full["input_ids"], full["attention_mask"])
    assert f_img.shape == (4, cfg.num_patches, cfg.hidden) and f_txt.shape == (4, 12, cfg.hidden)


def test_uwox_runs_on_one_modality_at_test_time(batch_factory):
    cfg = ModelConfig.preset("tiny")
    model = MixVLP(cfg).eval()
    batch = batch_factory(cfg, 3, mask_text=False)
    with torch.no_grad():
        f_img = model.pooled_image(batch["pyramid"])
        f_txt = model.pooled_text(batch["input_ids"], batch["attention_mask"])
        f_img2, f_txt2 = model.encode_pair(batch["pyramid"], batch["input_ids"], batch["attention_mask"])
    assert f_img.shape == f_txt.shape == (3, cfg.hidden)
    # UWOX has no cross-talk: features of one side do not depend on the other
    assert torch.allclose(model.pool(f_img2), f_img, atol=1e-6)
    # image-only and text-only batches train too
    model.train()
    assert model(dict(batch, has_text=torch.zeros(3, dtype=torch.bool)))["n_txt"] == 0


def test_baselines_from_the_same_parts(batch_factory):
    text = MixVLP(ModelConfig.preset("tiny", arch="aiayn-text"))
    image = MixVLP(ModelConfig.preset("tiny", arch="aiayn-image"))
    assert not hasattr(text, "patch_embed") and not hasattr(text, "decoder")
    assert not hasattr(image, "text_embed") and image.cfg.num_patches == 64 and not image.cfg.multiscale
    assert type(text.encoder) is type(image.encoder)
    b = batch_factory(text.cfg, 2)
    assert text(b)["n_img"] == 0 and text(b)["n_txt"] > 0
    assert image(b)["n_txt"] == 0 and image(b)["n_img"] > 0


def test_activation_checkpointing_same_gradients(batch_factory):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    a = MixVLP(cfg)
    b = MixVLP(ModelConfig.preset("tiny", activation_checkpointing=True))
    b.load_state_dict(a.state_dict())
    batch = batch_factory(cfg, 2)
    for m in (a, b):
        m(batch)["loss"].backward()
    ga = a.encoder.blocks[0].ffn_in.weight.grad
    assert torch.allclose(ga, b.encoder.blocks[0].ffn_in.weight.grad, atol=1e-6)
