"""Fault policy: a bad record or shard is skipped with a counted warning; too many abort the run."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter

log = logging.getLogger("mixvlp_ds.data")


class DataFaultError(RuntimeError):
    """More records were skipped than `max_skip_fraction` allows; the message says which and why."""


class FaultCounter:
    """Counts records seen and skipped (by reason) in one worker, logs each skip, enforces the limit.

    `seen` counts every record a shard should hold (index.json's count for shards that fail part
    way), so a truncated or unreadable shard weighs as much as its lost records.
    """

    def __init__(self, max_skip_fraction: float = 0.01, min_records: int = 200, skip_log: str = "",
                 where: str = ""):
        self.max_skip_fraction, self.min_records = max_skip_fraction, min_records
        self.skip_log, self.where = skip_log, where
        self.seen = 0
        self.skipped = 0
        self.reasons: Counter[str] = Counter()
        self.examples: list[str] = []

    def ok(self, n: int = 1) -> None:
        self.seen += n

    def skip(self, shard: str, key: str, reason: str, n: int = 1, already_seen: bool = False) -> None:
        """Record `n` lost records of `shard` (key "" for a whole shard remainder); `already_seen`
        for a record counted by `ok()` that failed later (e.g. its PNG at decoding)."""
        if not already_seen:
            self.seen += n
        self.skipped += n
        kind = reason.split(":")[0]
        self.reasons[kind] += n
        msg = f"skipped {n} record(s) of {shard}" + (f" key {key}" if key else "") + f": {reason}"
        if len(self.examples) < 5:
            self.examples.append(msg)
        log.warning("%s%s (skipped %d of %d so far)", self.where, msg, self.skipped, self.seen)
        if self.skip_log:
            line = json.dumps({"shard": shard, "key": key, "reason": reason, "n": n, "pid": os.getpid()})
            with open(self.skip_log, "a") as f:
                f.write(line + "\n")
        if self.seen >= self.min_records:
            self.check()

    def check(self) -> None:
        if self.seen and self.skipped > self.max_skip_fraction * self.seen:
            raise DataFaultError(
                f"{self.where}{self.skipped} of {self.seen} records skipped "
                f"({100 * self.skipped / self.seen:.2f}% > max_skip_fraction "
                f"{100 * self.max_skip_fraction:.2f}%); reasons {dict(self.reasons)}; first: "
                + " | ".join(self.examples))

    def as_dict(self) -> dict:
        return {"seen": self.seen, "skipped": self.skipped, "reasons": dict(self.reasons)}
