"""The objectives: masking rules, losses on masked positions only, pair matching, training."""

import torch

from mixvlp_ds.model import MixVLP, ModelConfig, mask_tokens, random_patch_masking
from mixvlp_ds.model.losses import image_loss
from mixvlp_ds.model.masking import masked_word_positions
from mixvlp_ds.patch_masking import draw_patch_masks
from mixvlp_ds.text.masking import masked_word_budget

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4


def test_mask_tokens_follows_bert_rule():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 150), generator=g)
    ids[:, 0], ids[:, 120], ids[:, 121:] = CLS, SEP, PAD
    att = (ids != PAD).long()
    masked, labels = mask_tokens(ids, att, mask_token_id=MASK, vocab_size=1000,
                                 special_token_ids=[PAD, UNK, CLS, SEP, MASK], prob=0.15, generator=g)
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, 120:].any()          # never specials or padding
    assert abs(chosen[:, 1:120].float().mean().item() - 0.15) < 0.01
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(masked[~chosen], ids[~chosen])
    frac_mask = (masked[chosen] == MASK).float().mean().item()
    frac_same = (masked[chosen] == ids[chosen]).float().mean().item()
    assert abs(frac_mask - 0.8) < 0.02 and abs(frac_same - 0.1) < 0.02


def test_each_row_masks_a_fixed_count_within_the_budget():
    """BERT's rule: round(0.15 n) words of a row with n real words (at least 1), never more than
    the budget, so the model reads a fixed (B, budget) set of positions."""
    g = torch.Generator().manual_seed(1)
    lengths = [3, 10, 47, 120, 148]
    ids = torch.full((len(lengths), 150), PAD)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, 1:n + 1], ids[i, n + 1] = CLS, torch.randint(5, 1000, (n,), generator=g), SEP
    att = (ids != PAD).long()
    _, labels = mask_tokens(ids, att, mask_token_id=MASK, vocab_size=1000,
                            special_token_ids=[PAD, UNK, CLS, SEP, MASK], prob=0.15, generator=g)
    counts = (labels != -100).sum(1).tolist()
    assert counts == [max(1, round(0.15 * n)) for n in lengths]
    budget = masked_word_budget(150, 0.15)
    assert budget == 23 and max(counts) <= budget
    positions, targets = masked_word_positions(labels, budget)
    assert positions.shape == targets.shape == (len(lengths), budget)
    for i, n in enumerate(counts):
        assert torch.equal(positions[i, :n], (labels[i] != -100).nonzero().squeeze(1))
        assert torch.equal(targets[i, :n], labels[i, positions[i, :n]]) and (targets[i, n:] == -100).all()


def test_patch_masks_of_a_mixed_batch_stay_among_images():
    has_image = torch.tensor([True, False, True, False, True])
    masks, sources = draw_patch_masks(has_image, (64, 16, 4), 0.15, torch.Generator().manual_seed(0))
    for m, src, n in zip(masks, sources, (64, 16, 4), strict=True):
        assert (m.sum(1) == has_image * max(1, round(0.15 * n))).all()   # 15% of image rows only
        rows = src[m] // n
        assert has_image[rows].all()                                     # replacements come from images
        own = torch.arange(5 * n).reshape(5, n)
        assert torch.equal(src[~m], own[~m])





def test_patch_masking_every_level_with_batch_patches():
    g = torch.Generator().manual_seed(0)
    levels = [torch.rand(3, n, 16, generator=g) for n in (64, 16, 4)]
    masked, masks = random_patch_masking(levels, 0.15, generator=g)
    pool = [x.reshape(-1, 16) for x in levels]
    for x, y, m, p in zip(levels, masked, masks, pool, strict=True):
        k = max(1, round(0.15 * x.shape[1]))
        assert (m.sum(1) == k).all()                                     # 15% at every level, every row
        assert torch.equal(y[~m], x[~m])                                 # the rest untouched
        for patch in y[m]:                                               # each a patch of the batch
            assert (p == patch).all(dim=1).any()


def test_losses_only_on_masked_positions(batch_factory):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = MixVLP(cfg).eval()
    batch = batch_factory(cfg, 4)
    with torch.no_grad():
        state = model.forward_fusion(model.forward_encoder(batch))
        ref = model.forward_loss(state)

        def loss_with(key, value):
            return model.forward_loss(dict(state, **{key: value}))

        # text: features at unmasked words do not matter, at a masked word they do
        where = state["mlm_labels"] != -100
        f_txt = state["f_txt"].clone()
        f_txt[~where] += 5.0
        assert torch.equal(loss_with("f_txt", f_txt)["L_txt"], ref["L_txt"])
        f_txt[where.nonzero()[0].tolist()[0], where.nonzero()[0].tolist()[1]] += 5.0
        assert loss_with("f_txt", f_txt)["L_txt"] != ref["L_txt"]
        # image: the target of an unmasked finest patch does not matter, of a masked one it does
        target, mask = state["target"].clone(), state["img_mask"]
        target[~mask] = 1.0 - target[~mask]
        assert torch.equal(loss_with("target", target)["L_img"], ref["L_img"])
        target[mask] = 1.0 - target[mask]
        assert loss_with("target", target)["L_img"] != ref["L_img"]
    # the same in the loss function itself
    pred, target = torch.rand(2, 8, 4), torch.rand(2, 8, 4)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, 1] = mask[1, 5] = True
    loss, n = image_loss(pred, target, mask)
    assert n == 2 and torch.isclose(loss, (pred[mask] - target[mask]).abs().mean())


def test_pair_matching_ignores_padding(batch_factory):
    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = MixVLP(cfg).eval()
    batch = batch_factory(cfg, 4)
    state = model.forward_fusion(model.forward_encoder(batch))
    pad = batch["attention_mask"] == 0
    assert pad.any()
    ids = batch["input_ids"].clone()
    ids[pad] = torch.randint(5, cfg.vocab_size, (int(pad.sum()),))
    state2 = model.forward_fusion(model.forward_encoder(dict(batch, input_ids=ids)))
    assert torch.allclose(state["pair_logits"], state2["pair_logits"], atol=1e-6)
    # and the head's inputs at padded words: garbage there changes nothing
    e_txt, mask = state["e_txt"], state["txt_mask"]
    e_img = torch.cat(state["e_img"], 1)
    noisy = e_txt.clone()
    noisy[~mask] = 1e3
    assert torch.allclose(model.pair_head(e_txt, mask, e_img), model.pair_head(noisy, mask, e_img), atol=1e-6)
    # more padding columns (a longer padded batch) changes nothing either
    wider = torch.nn.functional.pad(e_txt, (0, 0, 0, 3))
    wmask = torch.nn.functional.pad(mask, (0, 3))
    ref = model.pair_head(e_txt, mask, e_img)
    assert torch.allclose(ref, model.pair_head(wider, wmask, e_img), atol=1e-6)


def test_tiny_model_overfits_one_batch(batch_factory):
    # 8x8 blocks: 2 masked finest patches per image to memorise; same masks every step
    cfg = ModelConfig.preset("tiny", hidden=64, heads=4, intermediate=128, block_size=8)
    torch.manual_seed(0)
    model = MixVLP(cfg)
    batch = batch_factory(cfg, 2, pair=[1.0, 0.0])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(200):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first or {k: float(out[k].detach()) for k in ("L_txt", "L_img", "L_co")}
    last = {k: float(out[k].detach()) for k in ("L_txt", "L_img", "L_co")}
    assert out["n_txt"] > 0 and out["n_img"] == 4 and out["n_co"] == 2
    for k in first:
        assert last[k] * 5 <= first[k], (k, first[k], last[k])


def test_seeded_runs_are_bit_identical(batch_factory):
    cfg = ModelConfig.preset("tiny", dropout=0.1, attention_dropout=0.1)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        model = MixVLP(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for step in range(3):
            out = model(batch_factory(cfg, 4, seed=step))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(out["loss"].detach())
        results.append((torch.stack(losses), model.encoder.blocks[0].attn.query.weight.detach().clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_pair_head_learns_to_match_an_easy_cue():
    """The UWOX pair head on the shared encoder learns a visible image-text correspondence (which
    half of the film is bright vs the words "left"/"right") within a hundred steps, so an L_co that
    stays at its base-rate entropy on the synthetic data is about the data and scale, not the head."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from mixvlp_ds.model import MixVLP, ModelConfig

    torch.manual_seed(0)
    m = MixVLP(ModelConfig.preset("tiny", arch="uwox", vocab_size=16))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    def batch(n):
        side = rng.integers(0, 2, n)
        img = rng.integers(0, 60, (n, 32, 32)).astype(np.uint8)
        for i, s in enumerate(side):
            img[i, :, s * 16:(s + 1) * 16] += 150
        pyr = [torch.from_numpy(img)] + [torch.from_numpy(
            img.reshape(n, k, 32 // k, k, 32 // k).mean((2, 4)).astype(np.uint8)) for k in (16, 8)]
        match = rng.integers(0, 2, n)
        word = 5 + np.where(match == 1, side, 1 - side)                  # 5 = "left", 6 = "right"
        ids = torch.tensor(np.stack([np.full(n, 2), word, np.full(n, 3)], 1))
        return pyr, ids, torch.ones_like(ids), torch.tensor(match, dtype=torch.float32)

    def pair_logits(pyr, ids, att):
        e_img = torch.cat(m.encode_levels(m.image_levels(pyr)), 1)
        return m.pair_head(m.encode_words(ids, att), att.bool(), e_img)

    for _ in range(100):
        pyr, ids, att, y = batch(32)
        loss = F.binary_cross_entropy_with_logits(pair_logits(pyr, ids, att), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pyr, ids, att, y = batch(256)
    with torch.no_grad():
        logits = pair_logits(pyr, ids, att)
    assert ((logits > 0).float() == y).float().mean() > 0.95
