"""The config loader: defaults < file < overrides, typed, unknown keys rejected."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mixvlp_ds.config import ConfigError, from_dict, load_config, to_dict


@dataclass
class Inner:
    hidden: int = 8
    fusion: Literal["unit", "uwox"] = "uwox"
    levels: tuple[int, ...] = (224, 112, 56)


@dataclass
class Outer:
    name: str = "run"
    lr: float = 1e-4
    resume: str | None = None
    checkpointing: bool = False
    inner: Inner = field(default_factory=Inner)
    sources: list[dict] = field(default_factory=list)

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")


def test_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 3.0e-4\ninner:\n  hidden: 16\n  fusion: unit\n")
    cfg = load_config(Outer, path, ["inner.hidden=32", "checkpointing=true", "inner.levels=[64,32,16]"])
    assert cfg.lr == pytest.approx(3e-4)
    assert cfg.inner.hidden == 32 and cfg.inner.fusion == "unit"
    assert cfg.checkpointing is True
    assert cfg.inner.levels == (64, 32, 16)
    assert to_dict(cfg)["inner"]["levels"] == [64, 32, 16]


def test_json_file_and_round_trip(tmp_path):
    path = tmp_path / "run.json"
    path.write_text('{"name": "x", "resume": "s3://b/p", "sources": [{"uri": "a"}]}')
    cfg = load_config(Outer, path)
    assert cfg.resume == "s3://b/p" and cfg.sources == [{"uri": "a"}]
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    (["inner.hiden=3"], "unknown key"),
    (["inner.fusion=both"], "not one of"),
    (["inner.hidden=abc"], "expected an integer"),
    (["lr=-1"], "lr must be positive"),
    (["checkpointing=maybe"], "expected true/false"),
    (["novalue"], "key=value"),
])
def test_errors_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, override)


def test_list_items_by_index(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("sources:\n  - {uri: a, role: paired}\n  - {uri: b}\n")
    cfg = load_config(Outer, path, ["sources.1.uri=s3://bucket/b"])
    assert cfg.sources == [{"uri": "a", "role": "paired"}, {"uri": "s3://bucket/b"}]
    with pytest.raises(ConfigError, match="not an index"):
        load_config(Outer, path, ["sources.2.uri=c"])


def test_bad_file_is_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(Outer, tmp_path / "missing.yaml")
