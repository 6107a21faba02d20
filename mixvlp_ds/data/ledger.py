"""Where every rank x worker slot of the epochs in flight stands, and how another world finishes them.

An epoch's work is fixed when it is dealt: `deal_shards(..., n_slots)` gives every slot its shards,
and a slot's tuple stream is a pure function of (seed, epoch, slot, n_slots). So the position of a
run in its data is a ledger: for each epoch some rank has not finished, the number of slots it was
dealt to and how many tuples of each slot were delivered. Any world can finish those streams:

    work = remaining_work(states)          # all ranks' loader states of the checkpoint
    plan = assign(work, n_workers)         # {epoch: Part lists per new rank x worker}

A new worker plays its parts one after another (each skips what was delivered before the
checkpoint, replayed without decoding), so the interrupted epochs deliver exactly the tuples of an
uninterrupted run at the old world size, each once: the same images, the same true pairs, the same
report drawn for each re-paired image. Epochs after the plan are dealt to the new world.

A plan is carried in the loader state until its epochs are over, so a run resumed elastically can
itself be checkpointed and resumed on yet another world.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixvlp_ds.data.config import DataConfig, resolve_sources


@dataclass(frozen=True)
class Part:
    """One slot stream (of a dealing into n_slots slots) to play from tuple `skip` on."""

    slot: int
    n_slots: int
    skip: int = 0


def parts_for(plan: dict[int, dict], epoch: int, worker: int, n_workers: int,
              progress: dict[int, int]) -> list[Part]:
    """What global worker `worker` (= rank x workers + worker) plays in `epoch`: its parts of the plan,
    or its own slot of the epoch dealt to all n_workers. `progress` (slot -> tuples delivered) moves
    a part's start past what this rank delivered already."""
    if epoch in plan:
        entry = plan[epoch]
        return [Part(s, entry["n_slots"], progress.get(s, skip)) for s, skip in entry["parts"][worker]]
    return [Part(worker, n_workers, progress.get(worker, 0))]


def remaining_work(states: list[dict]) -> dict[int, tuple[int, dict[int, int]]]:
    """{epoch: (n_slots, {slot: tuples delivered})}: every slot of every epoch that some rank of the
    saving world had not finished (states: one loader state per rank, in rank order). A slot is done
    when its owner's epoch is past it; it stands where the owner's progress says when the owner is in
    that epoch; it has not started when the owner has not reached that epoch."""
    world, workers = len(states), states[0]["num_workers"]
    plan: dict[int, dict] = {}
    for state in states:  # a rank drops an epoch from its copy of the plan once it is past it
        for epoch, entry in state["plan"].items():
            plan.setdefault(epoch, entry)
    ranks_epoch = [s["epoch"] for s in states]
    last = max(ranks_epoch + list(plan))
    work: dict[int, tuple[int, dict[int, int]]] = {}
    for epoch in range(min(ranks_epoch), last + 1):
        if epoch in plan:
            n_slots = plan[epoch]["n_slots"]
            owned = {s: (g, skip) for g, parts in enumerate(plan[epoch]["parts"]) for s, skip in parts}
        else:
            n_slots = world * workers
            owned = {g: (g, 0) for g in range(n_slots)}
        left = {}
        for slot, (g, skip) in sorted(owned.items()):
            owner = states[g // workers]
            if epoch == owner["epoch"]:
                left[slot] = owner["progress"].get(slot, skip)
            elif epoch > owner["epoch"]:
                left[slot] = skip
        if left:
            work[epoch] = (n_slots, left)
    return work


def assign(work: dict[int, tuple[int, dict[int, int]]], n_workers: int) -> dict[int, dict]:
    """The plan of a world of n_workers (ranks x workers): the slots left in each epoch dealt round
    robin, in slot order. With more workers than slots left, the extra ones have nothing to play in
    that epoch and go on to the next one."""
    plan = {}
    for epoch, (n_slots, left) in sorted(work.items()):
        parts: list[list[list[int]]] = [[] for _ in range(n_workers)]
        for i, slot in enumerate(sorted(left)):
            parts[i % n_workers].append([slot, left[slot]])
        plan[epoch] = {"n_slots": n_slots, "parts": parts}
    return plan


def stream_fields(cfg: DataConfig, seed: int) -> dict:
    """What a slot's tuple stream depends on (besides epoch and slot): a checkpoint's positions only
    mean something to a loader with the same values."""
    sources = [{k: getattr(s, k) for k in ("name", "uri", "role", "weight", "percent", "rest",
                                           "pair_with", "split", "institution")}
               for s in resolve_sources(cfg)]
    return {"seed": seed, "backend": cfg.backend, "sources": sources, "subset_seed": cfg.subset_seed,
            "negative_rate": cfg.negative_rate, "shuffle_buffer": cfg.shuffle_buffer,
            "image_pool": cfg.image_pool, "report_pool": cfg.report_pool}


def stream_changes(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two stream_fields dicts ([] when equal); sources are
    compared by name and field: "sources[mimic].percent: 30.0 -> 50.0"."""
    out = []
    for key in sorted(set(saved) | set(now)):
        if key == "sources":
            before = {s["name"]: s for s in saved.get(key, [])}
            after = {s["name"]: s for s in now.get(key, [])}
            for name in sorted(set(before) - set(after)):
                out.append(f"source {name} removed")
            for name in sorted(set(after) - set(before)):
                out.append(f"source {name} added")
            for name in sorted(set(before) & set(after)):
                out += [f"sources[{name}].{f}: {before[name][f]!r} -> {after[name].get(f)!r}"
                        for f in before[name] if before[name][f] != after[name].get(f)]
        elif saved.get(key) != now.get(key):
            out.append(f"{key}: {saved.get(key)!r} -> {now.get(key)!r}")
    return out


def plan_from_json(plan: dict) -> dict[int, dict]:
    """JSON turns int keys into strings; loader states may have been through it."""
    return {int(e): v for e, v in plan.items()}
