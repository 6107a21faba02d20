"""`data.backend: streaming` (MDS shards through StreamingDataset): same batches, same resume."""

from collections import Counter

import pytest

from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data.batch import check_batch
from mixvlp_ds.model.config import ModelConfig

TINY = ModelConfig.preset("tiny")   # the model the batches are for: 32 px images, as the shards


def config(shards, workers=0, backend="streaming"):
    return DataConfig(sources=[SourceSpec("a", str(shards["a"])),
                               SourceSpec("b", str(shards["b"]), role="image_only")],
                      scenario="mixup2", paired_percent=30, batch_size=16, num_workers=workers,
                      backend=backend, shuffle_buffer=40, image_pool=16, report_pool=32)


def keys_of(batches):
    return [tuple(b["key"]) + tuple(b["text_key"]) for b in batches]


def test_streaming_backend_gives_the_same_records_as_wds(tiny_mds, tiny_shards, tokenizer):
    mds = list(build_pretrain_loader(config(tiny_mds), tokenizer, model=TINY))
    assert sum(check_batch(b) for b in mds) == 400
    wds = list(build_pretrain_loader(config(tiny_shards, backend="wds"), tokenizer, model=TINY))
    assert Counter(k for b in mds for k in b["key"]) == Counter(k for b in wds for k in b["key"])
    assert sum(b["pair"].sum() for b in mds) == sum(b["pair"].sum() for b in wds)


@pytest.mark.parametrize("workers,stop", [(0, 6), (2, 9)])
def test_streaming_exact_resume(tiny_mds, tokenizer, workers, stop):
    cfg = config(tiny_mds, workers)
    ref = build_pretrain_loader(cfg, tokenizer, seed=2, model=TINY)
    full = list(ref) + list(ref)
    run = build_pretrain_loader(cfg, tokenizer, seed=2, model=TINY)
    first = []
    for b in run:
        first.append(b)
        if len(first) == stop:
            break
    resumed = build_pretrain_loader(cfg, tokenizer, seed=2, model=TINY)
    resumed.load_state_dict(run.state_dict())
    assert keys_of(first + list(resumed) + list(resumed)) == keys_of(full)


def test_wrong_format_is_a_clear_error(tiny_shards, tokenizer):
    with pytest.raises(ValueError, match="format 'wds'"):
        build_pretrain_loader(config(tiny_shards), tokenizer, model=TINY)
