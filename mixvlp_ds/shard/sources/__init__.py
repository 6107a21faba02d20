"""Dataset sources for `python -m mixvlp_ds.shard --source NAME`, imported only when used.

Each module provides the `SourceModule` protocol (`mixvlp_ds.shard.source`): HELP (one paragraph),
add_arguments(parser) (options prefixed with the source name, e.g. --nih-dir) and build(args).
"""

from __future__ import annotations

import importlib
from types import ModuleType

SOURCES: dict[str, str] = {
    "nih": "mixvlp_ds.shard.sources.nih",
    "mimic": "mixvlp_ds.shard.sources.mimic",
    "openi": "mixvlp_ds.shard.sources.openi",
    "csv": "mixvlp_ds.shard.sources.csv_manifest",
    "synthetic": "mixvlp_ds.shard.sources.synthetic",
}


def source_names() -> list[str]:
    return list(SOURCES)


def load_source_module(name: str) -> ModuleType:
    """The module of source `name`; a ValueError lists the known names."""
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; known sources: {', '.join(SOURCES)}")
    return importlib.import_module(SOURCES[name])
