"""The model decides what a pre-training batch holds: a text-only model's workers decode no PNG and
its batches carry no pyramid; an image-only model's tokenize nothing; the tuples (and so the
loader's state) are the same whatever the model. And the data section owns no model value."""

from __future__ import annotations

import pytest
import torch

import mixvlp_ds.data.collate as collate_module
import mixvlp_ds.data.loader as loader_module
import mixvlp_ds.data.reader as reader
from mixvlp_ds.config import ConfigError, load_config
from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data.batch import check_batch, model_inputs
from mixvlp_ds.data.collate import BatchSpec
from mixvlp_ds.model.config import ModelConfig

BOTH = ModelConfig.preset("tiny")                            # uwox: images and reports, 32 px
TEXT = ModelConfig.preset("tiny", arch="aiayn-text")         # reports only
IMAGE = ModelConfig.preset("tiny", arch="aiayn-image")       # images only (single scale, 32 px)


def config(shards, **kw):
    sources = [SourceSpec("a", str(shards["a"])), SourceSpec("b", str(shards["b"]), role="image_only")]
    return DataConfig(sources=sources, scenario="mixup2", paired_percent=30, batch_size=16, num_workers=0,
                      shuffle_buffer=40, image_pool=16, report_pool=32, **kw)


def counting(monkeypatch, module, name: str) -> list:
    """Count the calls of module.name (still calling it)."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def run(shards, tokenizer, model, **kw) -> tuple[list[dict], dict]:
    loader = build_pretrain_loader(config(shards, **kw), tokenizer, seed=4, model=model)
    return list(loader), loader.state_dict()


def rows_of(batches):
    return [(k, tk, p, i, t) for b in batches for k, tk, p, i, t in
            zip(b["key"], b["text_key"], b["pair"].tolist(), b["has_image"].tolist(), b["has_text"].tolist(),
                strict=True)]


def test_a_text_only_model_decodes_no_png_and_gets_no_pyramid(tiny_shards, tokenizer, monkeypatch):
    pngs = counting(monkeypatch, reader, "decode_png")
    both, state_both = run(tiny_shards, tokenizer, BOTH)
    assert len(pngs) == 3 * sum(int(b["has_image"].sum()) for b in both)   # 3 levels per image row
    pngs.clear()
    text, state_text = run(tiny_shards, tokenizer, TEXT)
    assert pngs == []
    assert all("pyramid" not in b and "patch_mask" not in b for b in text)
    assert sum(check_batch(b) for b in text) == sum(check_batch(b) for b in both) == 400
    # the same tuples, rows and loader state: has_image / pair describe the tuple, not the model
    assert rows_of(text) == rows_of(both)
    assert state_text == state_both
    for bt, bb in zip(text, both, strict=True):   # the same words, masked the same way
        assert all(torch.equal(bt[k], bb[k]) for k in ("input_ids", "attention_mask", "mlm_labels"))
    moved = model_inputs(text[0], "cpu")
    assert set(moved) == {"input_ids", "attention_mask", "mlm_labels", "has_text", "pair"}


def test_a_text_only_model_keeps_no_png_bytes_in_the_records(tiny_shards, tokenizer, monkeypatch):
    kept = []
    real = reader.record_from_fields

    def spy(key, fields, *args, **kwargs):
        kept.extend(len(v) for k, v in fields.items() if k.startswith("img"))
        return real(key, fields, *args, **kwargs)

    monkeypatch.setattr(reader, "record_from_fields", spy)
    run(tiny_shards, tokenizer, TEXT)
    assert kept and set(kept) == {0}
    kept.clear()
    run(tiny_shards, tokenizer, BOTH)
    assert kept and min(kept) > 0


def test_an_image_only_model_tokenizes_nothing(tiny_shards, tokenizer, monkeypatch):
    tokenized = counting(monkeypatch, collate_module, "tokenize")
    texts = counting(monkeypatch, loader_module, "decode_text")
    image, _ = run(tiny_shards, tokenizer, IMAGE)
    assert tokenized == [] and texts == []
    assert all("input_ids" not in b and "mlm_labels" not in b for b in image)
    assert sum(check_batch(b) for b in image) == 400
    b = image[0]
    assert b["pyramid"][0].shape[1:] == (32, 32) and len(b["patch_mask"]) == 1   # single scale: one level
    assert int(b["has_text"].sum()) > 0            # the tuples' reports are still counted as there
    assert set(model_inputs(b, "cpu")) == {"pyramid", "patch_mask", "patch_source", "has_image", "pair"}


def test_the_spec_takes_sizes_and_ratios_from_the_model():
    data = DataConfig(sources=[SourceSpec("a", "x")], pad_to_max=False, label_space="cxr14")
    model = ModelConfig.preset("tiny", max_text_len=64, text_mask_ratio=0.2, image_mask_ratio=0.4)
    spec = BatchSpec.for_model(model, data)
    assert (spec.image_size, spec.max_text_len, spec.text_mask_ratio) == (32, 64, 0.2)
    assert spec.patch_masking.ratio == 0.4 and spec.patch_masking.patches_per_level == (64, 16, 4)
    assert (spec.label_space, spec.pad_to_max) == ("cxr14", False)
    assert BatchSpec.for_model(TEXT, data).patch_masking is None
    assert BatchSpec.for_model(IMAGE, data).max_text_len is None
    data.mask_text = False
    assert BatchSpec.for_model(model, data).text_mask_ratio is None


@pytest.mark.parametrize("key,owner", [("max_text_len", "model.max_text_len"),
                                       ("image_size", "model.image_size"),
                                       ("mask_text_prob", "model.text_mask_ratio")])
def test_a_data_section_with_a_model_value_is_refused(tmp_path, key, owner):
    path = tmp_path / "data.yaml"
    path.write_text(f"scenario: baseline\nsources: [{{name: a, uri: x}}]\n{key}: 32\n")
    with pytest.raises(ConfigError, match=rf"data.yaml: {key} is not a key here: the value is {owner}"):
        load_config(DataConfig, path)
