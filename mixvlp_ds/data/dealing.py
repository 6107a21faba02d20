"""How an epoch's shards are split over rank x worker slots, and how a slot interleaves its sources.
Both backends (WebDataset in loader.py, MDS in mds_backend.py) deal and interleave the same way.

    slots = deal_shards(shards, weights, epoch, seed, n_slots)   # slot = rank * workers + worker
    records = interleave({name: (n, iterator)}, rng)              # one stream, all sources ending together

Every random choice is drawn from `seeded(seed, epoch, slot, ...)`, so an epoch replays identically.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mixvlp_ds.data.reader import Record, ShardRef


def seeded(*parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]))


def deal_shards(shards: dict[str, list[ShardRef]], weights: dict[str, float], epoch: int, seed: int,
                n_slots: int) -> list[list[ShardRef]]:
    """This epoch's shards of every source, dealt to `n_slots` slots (rank-major: slot = rank *
    workers + worker). weight w: the shard list is repeated floor(w) times (a new shuffle each
    time) plus a fraction of one more shuffle; each source is dealt greedily to the slot with
    the fewest samples of that source, so every slot gets a share of every institution."""
    slots: list[list[ShardRef]] = [[] for _ in range(n_slots)]
    for si, (name, refs) in enumerate(sorted(shards.items())):
        rng = seeded(seed, epoch, si, 11)
        want = max(1, round(weights[name] * len(refs))) if refs else 0
        order: list[ShardRef] = []
        while len(order) < want:
            order += [refs[i] for i in rng.permutation(len(refs))]
        load = [0] * n_slots
        for ref in order[:want]:
            k = min(range(n_slots), key=lambda j: (load[j], j))
            slots[k].append(ref)
            load[k] += max(ref.num_samples, 1)
    for k, slot in enumerate(slots):
        rng = seeded(seed, epoch, k, 13)
        slots[k] = [slot[i] for i in rng.permutation(len(slot))]
    return slots


def interleave(streams: dict[str, tuple[int, Iterator[Record]]],
               rng: np.random.Generator) -> Iterator[Record]:
    """Records of several sources in one stream: the next one comes from a source chosen with
    probability proportional to its remaining records, so all sources end together."""
    left = {name: max(n, 1) for name, (n, _) in streams.items()}
    iters = {name: it for name, (_, it) in streams.items()}
    while iters:
        if len(iters) == 1:  # the draw is certain: skip rng.choice (~20 us a record; rng is ours alone)
            yield from next(iter(iters.values()))
            return
        names = sorted(iters)
        p = np.array([left[n] for n in names], dtype=np.float64)
        name = names[int(rng.choice(len(names), p=p / p.sum()))]
        rec = next(iters[name], None)
        if rec is None:
            del iters[name]
            continue
        left[name] = max(left[name] - 1, 1)
        yield rec
