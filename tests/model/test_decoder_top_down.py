"""The opt-in top-down decoder (model.decoder_top_down=unpool, model.decoder_pixel_skip=true): each
finer query gets its parent's decoded token for its quadrant; the pixels are a correction to the
upsampled mid level. Still one graph, and the paper's decoder unchanged when off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mixvlp_ds.apps.regeneration import coarse_upsampled, regenerate_images
from mixvlp_ds.config import ConfigError
from mixvlp_ds.data.batch import model_inputs
from mixvlp_ds.model import MixVLP, ModelConfig
from mixvlp_ds.model.decoder import Unpool


def top_down(**kw) -> ModelConfig:
    return ModelConfig.preset("tiny", arch="uwox", decoder_top_down="unpool", decoder_pixel_skip=True, **kw)


def test_unpool_hands_each_fine_token_its_parents_quadrant():
    torch.manual_seed(0)
    unpool = Unpool(8)
    coarse = torch.randn(2, 4, 8)                      # a 2x2 grid
    fine = unpool(coarse)                              # a 4x4 grid
    per_quadrant = unpool.proj(coarse).view(2, 2, 2, 2, 2, 8)   # (row, col, dy, dx)
    for r in range(4):
        for c in range(4):
            assert torch.equal(fine[:, r * 4 + c], per_quadrant[:, r // 2, c // 2, r % 2, c % 2])


def test_a_silent_pixel_mlp_regenerates_the_upsampled_mid_level(batch_factory):
    """With the MLP's output at zero, the prediction IS the reference 'coarse level upsampled'."""
    torch.manual_seed(0)
    model = MixVLP(top_down()).eval()
    torch.nn.init.zeros_(model.decoder.pixels.fc2.weight)
    torch.nn.init.zeros_(model.decoder.pixels.fc2.bias)
    pyr = batch_factory(model.cfg, 3)["pyramid"]
    regen = regenerate_images(model, pyr, seed=0)
    ref = coarse_upsampled(pyr[1].numpy(), model.cfg.image_size)
    assert np.abs(regen.astype(int) - ref.astype(int)).max() <= 1   # rounding of two uint8 paths


def test_top_down_training_forward_is_one_graph(batch_factory):
    torch.manual_seed(0)
    model = MixVLP(top_down()).train()
    batch = model_inputs(batch_factory(model.cfg, 4, has_image=[True, False, True, True]), "cpu")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda b: model(b)["loss"])(batch)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    out = model(batch)
    out["loss"].backward()
    assert model.decoder.unpool_down.proj.weight.grad.abs().sum() > 0   # the new path trains


def test_off_by_default_and_multiscale_only():
    assert ModelConfig.preset("bert-base").decoder_top_down == "attention"
    assert not hasattr(MixVLP(ModelConfig.preset("tiny")).decoder, "unpool_down")
    with pytest.raises(ConfigError, match="multi-scale"):
        ModelConfig.preset("tiny", arch="aiayn-image", decoder_pixel_skip=True)
