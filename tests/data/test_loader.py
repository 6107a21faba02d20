"""The loader on real (tiny) shards: batches, rank x worker split, exact resume."""

from collections import Counter

import pytest
import torch

from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data.batch import check_batch
from mixvlp_ds.data.reader import iter_samples
from mixvlp_ds.model.config import ModelConfig

TINY = ModelConfig.preset("tiny")   # the model the batches are for: 32 px images, as the shards


def config(shards, scenario="mixup2", workers=0, **kw):
    sources = [SourceSpec("a", str(shards["a"]))]
    if scenario == "mixup2":
        sources.append(SourceSpec("b", str(shards["b"]), role="image_only"))
    kw = {"paired_percent": 30, "batch_size": 16, "shuffle_buffer": 40, "image_pool": 16,
          "report_pool": 32, **kw}
    return DataConfig(sources=sources, scenario=scenario, num_workers=workers, **kw)


def test_batches_follow_the_contract(tiny_shards, tokenizer):
    loader = build_pretrain_loader(config(tiny_shards), tokenizer, model=TINY)
    batches = list(loader)
    rows = sum(check_batch(b) for b in batches)
    assert rows == 400 and loader.epoch == 1
    b = batches[0]
    assert b["pyramid"][0].shape[1:] == (32, 32) and b["input_ids"].shape == (16, 150)
    assert (b["mlm_labels"] != -100).any()
    masked = b["mlm_labels"] != -100
    assert (b["attention_mask"][masked] == 1).all()
    pair = torch.cat([x["pair"] for x in batches])
    n_pair = int(pair.sum())
    assert 0 < n_pair < 240
    assert all(set(x["shares"]) >= {"paired", "repaired", "institution/a"} for x in batches)
    assert sum(k.startswith("b/") for x in batches for k in x["key"]) == 160
    # each row carries its own image's institution (not the last source's)
    assert all(inst == k.split("/", 1)[0] for x in batches for k, inst in zip(x["key"], x["institution"],
                                                                              strict=True))
    # re-paired rows carry another study's report
    for x in batches:
        for k, tk, p in zip(x["key"], x["text_key"], x["pair"].tolist(), strict=True):
            study = lambda key: key.rsplit("/", 1)[0]  # noqa: E731
            assert (p == 1.0) == (k == tk) and (p == 1.0 or study(k) != study(tk))


def test_labels_come_from_the_image_record(tiny_shards, tokenizer):
    truth = {s["key"]: s["labels"] for s in iter_samples(str(tiny_shards["a"]), "train")}
    cfg = config(tiny_shards, "baseline", paired_percent=100)
    for b in build_pretrain_loader(cfg, tokenizer, model=TINY):
        for k, row in zip(b["key"], b["labels"], strict=True):
            assert torch.equal(torch.nan_to_num(row, 9.0), torch.nan_to_num(torch.from_numpy(truth[k]), 9.0))


@pytest.mark.parametrize("world,workers", [(2, 2), (3, 0)])
def test_ranks_and_workers_read_every_record_once_per_epoch(tiny_shards, tokenizer, world, workers):
    cfg = config(tiny_shards, "baseline", workers=workers, paired_percent=100)
    keys = Counter()
    for rank in range(world):
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=world, model=TINY)
        batches = list(loader)
        assert {len(b["key"]) for b in batches} == {cfg.batch_size}  # one shape: short tails are padded
        keys.update(k for b in batches for k in b["key"] if k)    # padding rows have the key ""
    assert len(keys) == 240 and set(keys.values()) == {1}


def keys_of(batches):
    return [tuple(b["key"]) + tuple(b["text_key"]) for b in batches]


@pytest.mark.parametrize("workers,stop", [(0, 7), (2, 5), (2, 12)])
def test_exact_resume(tiny_shards, tokenizer, workers, stop):
    cfg = config(tiny_shards, workers=workers)
    ref = build_pretrain_loader(cfg, tokenizer, seed=5, model=TINY)
    full = list(ref) + list(ref)  # two epochs
    run = build_pretrain_loader(cfg, tokenizer, seed=5, model=TINY)
    first = []
    for b in run:
        first.append(b)
        if len(first) == stop:
            break
    state = run.state_dict()
    resumed = build_pretrain_loader(cfg, tokenizer, seed=5, model=TINY)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert keys_of(first + rest) == keys_of(full)
    b0, r0 = full[stop], rest[0]
    assert torch.equal(b0["input_ids"], r0["input_ids"]) and torch.equal(b0["pyramid"][0], r0["pyramid"][0])


def test_epochs_differ(tiny_shards, tokenizer):
    loader = build_pretrain_loader(config(tiny_shards), tokenizer, model=TINY)
    assert keys_of(list(loader)) != keys_of(list(loader))


def test_world_size_change_policy(tiny_shards, tokenizer):
    """The other policies (exact, the default, is tests/data/test_elastic.py)."""
    cfg = config(tiny_shards, on_world_size_change="restart_epoch")
    loader = build_pretrain_loader(cfg, tokenizer, model=TINY)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    other = build_pretrain_loader(cfg, tokenizer, rank=0, world_size=2, model=TINY)
    with pytest.raises(ValueError, match="load_states"):  # one rank cannot say where the others are
        other.load_state_dict(state)
    other.load_states([state])
    assert other.epoch == 0 and other.progress == {} and other.plan == {}
    cfg.on_world_size_change = "next_epoch"
    other = build_pretrain_loader(cfg, tokenizer, rank=1, world_size=2, model=TINY)
    other.load_states([state])
    assert other.epoch == 1 and other.plan == {}
    cfg.on_world_size_change = "error"
    with pytest.raises(ValueError, match="world_size"):
        build_pretrain_loader(cfg, tokenizer, rank=0, world_size=2, model=TINY).load_states([state])


def test_a_dropped_loader_stops_its_workers_at_once(tiny_shards, tokenizer):
    """No reference cycle: the last reference going frees the loader (no garbage-collector pass)
    and stops its persistent workers; a cycle left that to a random later moment, where the
    shutdown waited 5 s per worker inside whatever ran next (10 s per test, measured)."""
    import gc
    import weakref

    cfg = config(tiny_shards, workers=2)
    gc.disable()
    try:
        loader = build_pretrain_loader(cfg, tokenizer, seed=5, model=TINY)
        it = iter(loader)
        next(it)
        workers = list(loader._dataloader._iterator._workers)
        assert all(w.is_alive() for w in workers)
        it.close()
        gone = weakref.ref(loader)
        del loader, it
        assert gone() is None
        for w in workers:
            w.join(timeout=2)
        assert not any(w.is_alive() for w in workers)
    finally:
        gc.enable()
    with build_pretrain_loader(cfg, tokenizer, seed=5, model=TINY) as again:
        assert len(list(again)) > 0
    assert again._dataloader is None
