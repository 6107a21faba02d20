"""model.pair_loss=batch: the pair head scores every image of the batch against every report, and
L_co counts a true pair's own report (or the same words in another row) as the positive."""

from __future__ import annotations

import pytest
import torch

from mixvlp_ds.config import ConfigError
from mixvlp_ds.data.batch import model_inputs
from mixvlp_ds.model import MixVLP, ModelConfig
from mixvlp_ds.model.losses import batch_pair_loss
from mixvlp_ds.model.masking import IGNORE_INDEX, same_report


def test_all_pairs_equals_the_head_on_each_combination():
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", arch="uwox")
    head = MixVLP(cfg).pair_head
    torch.nn.init.normal_(head.linear.weight)               # every position matters
    e_img = torch.randn(3, cfg.num_patches, cfg.hidden)
    e_txt = torch.randn(4, 10, cfg.hidden)
    mask = torch.tensor([[1] * 10, [1] * 6 + [0] * 4, [1] * 3 + [0] * 7, [1] * 8 + [0] * 2]).bool()
    e_txt = torch.where(mask[:, :, None], e_txt, torch.randn_like(e_txt) * 100)   # padding must not count
    every = head.all_pairs(e_txt, mask, e_img)
    assert every.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            one = head(e_txt[j:j + 1], mask[j:j + 1], e_img[i:i + 1])
            assert torch.allclose(every[i, j], one[0], atol=1e-4), (i, j)


def test_same_report_sees_through_the_word_masks():
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 4, 8, 9, 3], [2, 7, 8, 5, 3]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[1, 1] = 7        # row 1 is row 0 with word 1 masked
    labels[2, 3] = 6        # row 2's masked word was another one
    same = same_report(ids, labels)
    assert same.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_positives_negatives_and_rows_left_out():
    # rows: 0, 1, 2 true pairs (2 carries row 0's words); 3 re-paired; 4 image only
    pair = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0])
    weight = torch.tensor([True, True, True, True, False])
    same = torch.eye(5, dtype=torch.bool)
    same[0, 2] = same[2, 0] = True
    big = 30.0
    logits = torch.full((5, 5), -big)
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 2), (2, 0)]:
        logits[i, j] = big                                     # the positives, right
    loss, n = batch_pair_loss(logits, pair, weight, same)
    assert n.item() == 9                                        # images 0-2 x reports 0-2
    assert loss.item() < 1e-6
    # the re-paired row and the row without a report never count, on either axis
    for i, j in [(3, 3), (3, 0), (0, 3), (0, 4), (4, 4), (4, 1)]:
        worse = logits.clone()
        worse[i, j] = -worse[i, j]
        assert batch_pair_loss(worse, pair, weight, same)[0].item() < 1e-6, (i, j)
    # a true pair's own report scored low, or the same words in another row, or another report high
    for i, j in [(0, 0), (0, 2), (1, 0), (2, 1)]:
        worse = logits.clone()
        worse[i, j] = -worse[i, j]
        assert batch_pair_loss(worse, pair, weight, same)[0].item() > 1.0, (i, j)


def test_the_model_trains_the_batch_loss_and_no_pair_means_zero(batch_factory):
    torch.manual_seed(0)
    cfg = ModelConfig.preset("tiny", arch="uwox", pair_loss="batch")
    model = MixVLP(cfg).train()
    batch = model_inputs(batch_factory(cfg, 4, pair=[1.0, 1.0, 0.0, 1.0]), "cpu")
    out = model(batch)
    assert out["n_co"].item() == 9 and torch.isfinite(out["L_co"])     # 3 true pairs x 3
    out["loss"].backward()
    assert model.pair_head.linear.weight.grad.abs().sum() > 0
    none = model(model_inputs(batch_factory(cfg, 4, pair=[0.0] * 4), "cpu"))
    assert none["n_co"].item() == 0 and none["L_co"].item() == 0.0


def test_an_unknown_pair_loss_is_refused():
    with pytest.raises(ConfigError, match="pair_loss"):
        ModelConfig.preset("tiny", arch="uwox", pair_loss="pairs")
