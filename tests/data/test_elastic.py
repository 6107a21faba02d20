"""Resume on another world: the interrupted epoch delivers exactly the uninterrupted run's tuples.

A "world" here is ranks x workers, played one rank after another in this process (each rank's
loader is independent; only the checkpoint joins them)."""

from collections import Counter

import pytest

from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data.ledger import assign, remaining_work
from mixvlp_ds.model.config import ModelConfig

TINY = ModelConfig.preset("tiny")   # the model the batches are for: 32 px images, as the shards


def config(shards, scenario="mixup2", workers=0, **kw):
    sources = [SourceSpec("a", str(shards["a"]))]
    if scenario == "mixup2":
        sources.append(SourceSpec("b", str(shards["b"]), role="image_only"))
    kw = {"paired_percent": 30, "batch_size": 16, "shuffle_buffer": 40, "image_pool": 16,
          "report_pool": 32, "negative_rate": 0.2, **kw}
    return DataConfig(sources=sources, scenario=scenario, num_workers=workers, **kw)


def tuples(batches) -> Counter:
    """(image key, report key, pair) of every non-padding row."""
    rows = (row for b in batches for row in zip(b["key"], b["text_key"], b["pair"].tolist(), strict=True))
    return Counter((k, tk, p) for k, tk, p in rows if k or tk)


def epoch_of_world(cfg, tokenizer, world, seed=3):
    """One whole epoch of an uninterrupted world: its tuples."""
    out = Counter()
    for rank in range(world):
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=world, seed=seed, model=TINY)
        out += tuples(list(loader))
    return out


def run_until(cfg, tokenizer, world, stops, seed=3, states=None):
    """Each rank of `world` trains `stops[rank]` batches (after resuming from `states`, if given):
    returns (the tuples it delivered in the epoch it started in, the loader states)."""
    seen, out_states = Counter(), []
    for rank in range(world):
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=world, seed=seed, model=TINY)
        if states is not None:
            loader.load_states(states)
        it, got = iter(loader), []
        for _ in range(stops[rank]):
            batch = next(it, None)
            if batch is None:  # this rank's part of the epoch is over
                break
            got.append(batch)
        seen += tuples(got)
        out_states.append(loader.state_dict())
        it.close()
    return seen, out_states


def finish(cfg, tokenizer, world, states, seed=3):
    """The new world plays the rest of the interrupted epoch (its first `for`): the tuples."""
    seen = Counter()
    for rank in range(world):
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=world, seed=seed, model=TINY)
        loader.load_states(states)
        assert loader.epoch == 0
        seen += tuples(list(loader))
        assert loader.epoch == 1 and loader.plan == {}
    return seen


@pytest.mark.parametrize("old,old_workers,stops,new,new_workers", [
    (2, 2, [5, 3], 1, 0),     # 2 ranks x 2 workers -> 1 rank in the main process
    (1, 0, [6], 2, 0),        # 1 -> 2: rank 1 has nothing of epoch 0 left and goes on to epoch 1
    (1, 2, [4], 3, 1),        # 1 x 2 workers -> 3 x 1
])
def test_the_interrupted_epoch_uses_each_tuple_once(tiny_shards, tokenizer, old, old_workers, stops, new,
                                                    new_workers):
    before_cfg, after_cfg = config(tiny_shards, workers=old_workers), config(tiny_shards, workers=new_workers)
    whole = epoch_of_world(before_cfg, tokenizer, old)
    before, states = run_until(before_cfg, tokenizer, old, stops)
    after = finish(after_cfg, tokenizer, new, states)
    assert sum(before.values()) > 0 and sum(after.values()) > 0
    assert before + after == whole  # the same tuples (images, reports drawn, pairs), none twice, none left
    images = Counter(k for (k, _, _) in whole.elements() if k)
    assert set(images.values()) == {1}  # and every image of the epoch once


def test_every_record_once_on_a_paired_source(tiny_shards, tokenizer):
    cfg = config(tiny_shards, "baseline", paired_percent=100, negative_rate=0.0)
    before, states = run_until(cfg, tokenizer, 3, [2, 4, 1])
    after = finish(cfg, tokenizer, 2, states)
    keys = Counter(k for (k, _, _) in (before + after).elements())
    assert len(keys) == 240 and set(keys.values()) == {1}


def test_a_second_resume_on_a_third_world(tiny_shards, tokenizer):
    """2 ranks -> 1 (stopped again mid-epoch) -> 3 ranks: still each tuple of epoch 0 once."""
    cfg = config(tiny_shards, workers=0)
    whole = epoch_of_world(cfg, tokenizer, 2)
    first, states = run_until(cfg, tokenizer, 2, [4, 2])
    second, states = run_until(cfg, tokenizer, 1, [3], states=states)
    assert states[0]["plan"]  # the plan of the first resume is carried on
    third = finish(cfg, tokenizer, 3, states)
    assert first + second + third == whole


def test_ranks_in_different_epochs(tiny_shards, tokenizer):
    """Ranks may end an epoch a few batches apart: rank 0 already in epoch 1 when the checkpoint is
    taken. The plan covers both epochs; on 4 ranks, ranks 2 and 3 have nothing of either (two empty
    planned epochs, which the training loop accepts) and the tuples of both epochs are each used once."""
    from mixvlp_ds.train.loop import batches_forever

    cfg = config(tiny_shards, "baseline", paired_percent=100, workers=0)
    states, seen = [], {0: Counter(), 1: Counter()}
    for rank, stop in ((0, 9), (1, 3)):  # rank 0: all 8 batches of epoch 0, then 1 of epoch 1
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=2, seed=3, model=TINY)
        n = 0
        while n < stop:
            epoch = loader.epoch
            for b in loader:
                n += 1
                seen[epoch] += tuples([b])
                if n == stop:
                    break
        states.append(loader.state_dict())
        loader.close()
    assert [s["epoch"] for s in states] == [1, 0]
    work = remaining_work([dict(s, progress={int(k): v for k, v in s["progress"].items()}, plan={})
                           for s in states])
    assert sorted(work) == [0, 1] and list(work[0][1]) == [1] and set(work[1][1]) == {0, 1}
    assert [len(assign(work, 1)[e]["parts"][0]) for e in (0, 1)] == [1, 2]
    for rank in range(4):
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=4, seed=3, model=TINY)
        loader.load_states(states)
        seen[0] += tuples(list(loader))
        seen[1] += tuples(list(loader))
        assert loader.epoch == 2 and loader.plan == {}
        if rank >= 2:
            assert next(batches_forever(loader))["key"][0]  # epoch 2 has data for every rank again
        loader.close()
    whole = [Counter(), Counter()]
    for rank in range(2):
        loader = build_pretrain_loader(cfg, tokenizer, rank=rank, world_size=2, seed=3, model=TINY)
        whole[0] += tuples(list(loader))
        whole[1] += tuples(list(loader))
    assert seen[0] == whole[0] and seen[1] == whole[1]


def test_a_changed_source_list_is_refused(tiny_shards, tokenizer):
    cfg = config(tiny_shards)
    _, states = run_until(cfg, tokenizer, 1, [2])
    other = config(tiny_shards, "baseline")
    with pytest.raises(ValueError, match="sources.*on_stream_change"):
        build_pretrain_loader(other, tokenizer, seed=3, model=TINY).load_states(states)
    other.on_stream_change = "restart_epoch"
    loader = build_pretrain_loader(other, tokenizer, seed=3, model=TINY)
    loader.load_states(states)
    assert loader.epoch == 0 and loader.progress == {}
