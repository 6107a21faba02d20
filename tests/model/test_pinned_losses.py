"""The pre-training losses on fixed batches, pinned to the values the model gave before the
static-shape rewrite (row selection, boolean indexing, masks drawn inside the model).

`pinned_losses.json` was written by that model (commit 30556dc) with `python -m
tests.model.test_pinned_losses`; the rewrite must give the same values to float tolerance. The
batches are built here from explicit draws (not the data pipeline's masking, which may change), and
the patch masks are drawn as the old model drew them: per level `rand(B_img, N)` -> argsort -> the
first round(0.15 N), then per level `randint(B_img * N)` for the replacing patch, over the rows that
have an image only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mixvlp_ds.model import MixVLP, ModelConfig

GOLDEN = Path(__file__).with_name("pinned_losses.json")
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
CASES = {
    # name: (arch, has_image, has_text, pair)
    "uwox_paired": ("uwox", [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0]),
    "uwox_mixed": ("uwox", [1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 1]),
    "unit_paired": ("unit", [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 1]),
    "aiayn_text": ("aiayn-text", [0, 0, 0], [1, 1, 1], [0, 0, 0]),
    "aiayn_image": ("aiayn-image", [1, 1, 1], [0, 0, 0], [0, 0, 0]),
}


def fixed_batch(cfg: ModelConfig, has_image, has_text, pair, seed: int = 0, text_len: int = 14) -> dict:
    """Built here on purpose rather than by conftest's make_batch: the pinned batches must not move
    when the shared test helpers do."""
    g = torch.Generator().manual_seed(seed)
    b, s = len(has_image), cfg.image_size
    has_image, has_text = torch.tensor(has_image, dtype=torch.bool), torch.tensor(has_text, dtype=torch.bool)
    base = torch.rand(b, 1, s // 4, s // 4, generator=g)
    full = torch.nn.functional.interpolate(base, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
    full = full * has_image[:, None, None]
    pyramid = [(torch.nn.functional.interpolate(full[:, None], size=(n, n), mode="area")[:, 0] * 255)
               .round().to(torch.uint8) for n in (s, s // 2, s // 4)]
    ids = torch.full((b, text_len), PAD, dtype=torch.long)
    labels = torch.full((b, text_len), -100, dtype=torch.long)
    for i in range(b):
        n = int(torch.randint(4, text_len - 1, (1,), generator=g)) if has_text[i] else 0
        words = torch.randint(5, cfg.vocab_size, (n,), generator=g)
        ids[i, : n + 2] = torch.cat([torch.tensor([CLS]), words, torch.tensor([SEP])])
        chosen = 1 + torch.randperm(n, generator=g)[: max(1, round(0.3 * n))] if n else torch.zeros(0).long()
        labels[i, chosen] = ids[i, chosen]
        ids[i, chosen] = MASK
    att = (ids != PAD).long()
    return {"pyramid": pyramid, "has_image": has_image, "input_ids": ids, "attention_mask": att,
            "mlm_labels": labels, "has_text": has_text, "pair": torch.tensor(pair, dtype=torch.float32)}


def old_patch_masks(cfg: ModelConfig, has_image: torch.Tensor, seed: int) -> tuple[list, list]:
    """The old model's draws, as full-batch (mask (B, N) bool, source (B, N) long) per level."""
    g = torch.Generator().manual_seed(seed)
    rows = has_image.nonzero().squeeze(1)
    b, bi = has_image.numel(), rows.numel()
    sizes = cfg.patches_per_level()
    small = []
    for n in sizes:
        k = max(1, round(cfg.image_mask_ratio * n))
        idx = torch.rand(bi, n, generator=g).argsort(dim=1)[:, :k]
        small.append(torch.zeros(bi, n, dtype=torch.bool).scatter_(1, idx, True))
    masks, sources = [], []
    for n, m in zip(sizes, small, strict=True):
        picks = torch.randint(bi * n, (bi, n), generator=g)
        mask = torch.zeros(b, n, dtype=torch.bool)
        mask[rows] = m
        source = torch.arange(b * n).reshape(b, n)
        source[rows] = rows[picks // n] * n + picks % n
        masks.append(mask)
        sources.append(source)
    return masks, sources


def case_model_and_batch(name: str):
    arch, has_image, has_text, pair = CASES[name]
    cfg = ModelConfig.preset("tiny", arch=arch)
    torch.manual_seed(0)
    model = MixVLP(cfg).eval()
    batch = fixed_batch(cfg, has_image, has_text, pair)
    if cfg.use_image:
        batch["patch_mask"], batch["patch_source"] = old_patch_masks(cfg, batch["has_image"], seed=7)
    return model, batch


def losses(name: str) -> dict[str, float]:
    model, batch = case_model_and_batch(name)
    with torch.no_grad():
        out = model(batch)
    return {k: float(out[k]) for k in ("loss", "L_txt", "L_img", "L_co", "n_txt", "n_img", "n_co")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_equal_the_pinned_values(name):
    want = json.loads(GOLDEN.read_text())[name]
    got = losses(name)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (key, got[key], value)
    assert want["loss"] > 0


if __name__ == "__main__":  # regenerate (only when the model's arithmetic is meant to change)
    GOLDEN.write_text(json.dumps({name: losses(name) for name in sorted(CASES)}, indent=1) + "\n")
