"""What a dataset source hands the shard writer: a stream of `SourceItem`s, plus a reject log.

A source only *lists* records (cheap: reads CSV/XML/report text); pixels are loaded later in the
writer's worker processes, from `image_path` or by calling `image_fn` (a picklable callable,
e.g. a `functools.partial` of a module-level function). Everything a source yields must be in a
deterministic order, so that re-running the same command writes byte-identical shards.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass
class SourceItem:
    """One record to write. At least one of (image_path / image_fn, text) is set.

    meta: institution, patient_id, study_id, view, split (and source_file for text-only records);
    the writer adds orig_width, orig_height, orig_bit_depth, source_file and source_sha1 from the
    loaded image.
    """

    key: str
    meta: dict
    text: str | None = None
    labels: dict[str, int | None] | None = None
    image_path: str | None = None
    image_fn: Callable[[], np.ndarray] | None = None

    @property
    def has_image(self) -> bool:
        return self.image_path is not None or self.image_fn is not None


class Source(Protocol):
    """A dataset source. `label_space` is a key of `mixvlp_ds.labels.LABEL_SPACES`, or an
    institution's own space (`mixvlp_ds.labels.custom_label_space`)."""

    name: str
    label_space: str

    def items(self, rejects: RejectLog) -> Iterator[SourceItem]: ...


class SourceModule(Protocol):
    """What each module in `mixvlp_ds.shard.sources` provides to the command line."""

    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def build(self, args: argparse.Namespace) -> Source: ...


class InputLayoutError(RuntimeError):
    """The input folder is not laid out as the source expects; the message says what was expected."""


@dataclass
class RejectLog:
    """Counted skips, each written as one JSON line {file, key, reason} to `rejects.jsonl`.

    Thread-safe; also used for informational counts that are not rejects (`note`)."""

    path: Path | None = None
    counts: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _fh: object = field(default=None, repr=False)

    def reject(self, reason: str, file: str | None = None, key: str | None = None, detail: str = "") -> None:
        """Record a skipped input. `reason` is a short category (counted), `detail` free text."""
        with self._lock:
            self.counts[reason] += 1
            if self.path is not None:
                if self._fh is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
                rec = {"file": file, "key": key, "reason": reason, "detail": detail}
                self._fh.write(json.dumps(rec) + "\n")
                self._fh.flush()

    def note(self, what: str, n: int = 1) -> None:
        """Count something worth reporting that is not a reject (e.g. images absent from disk)."""
        with self._lock:
            self.notes[what] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
