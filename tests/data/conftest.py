"""Tiny shard folders for the data tests, written by the real shard writer.

Institutions (32 px images, 25 samples per shard):
    a (paired, chexpert14): 240 image+report records, 2 images per study, 1 study per patient
    b (image_only):         160 images, no reports
One tokenizer, trained on a's reports, serves every test of the run.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
from mixvlp_ds.shard.source import SourceItem

WORDS = ("heart size normal lungs clear no effusion pneumothorax mild atelectasis left base "
         "cardiomegaly edema opacity right lobe stable tubes lines").split()


def noise_image(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


class TinySource:
    """`num` records of one institution; record i: patient i // 2, study i // 2."""

    label_space = "chexpert14"

    def __init__(self, name: str, num: int, with_text: bool = True, with_image: bool = True, seed: int = 0):
        self.name, self.num, self.seed = name, num, seed
        self.with_text, self.with_image = with_text, with_image

    def __len__(self) -> int:
        return self.num

    def items(self, rejects):
        rng = np.random.default_rng(self.seed)
        for i in range(self.num):
            pid, sid = f"{self.name}p{i // 2}", f"{self.name}s{i // 2}"
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 30)))) if self.with_text else None
            labels = {n: [1, 0, -1, None][int(rng.integers(4))] for n in CHEXPERT14}
            yield SourceItem(
                key=make_key(self.name, sid, f"im{i}"),
                meta={"institution": self.name, "patient_id": pid, "study_id": sid, "view": "PA",
                      "split": "train"},
                text=text, labels=labels,
                image_fn=functools.partial(noise_image, self.seed * 100_000 + i) if self.with_image else None)


def write_tiny(out: Path, name: str, num: int, fmt: str = "wds", **kw) -> Path:
    write_dataset(TinySource(name, num, **kw), out,
                  ShardOptions(image_size=32, shard_max_samples=25, workers=1, format=fmt))
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    return {"a": write_tiny(root / "a", "a", 240, seed=1),
            "b": write_tiny(root / "b", "b", 160, with_text=False, seed=2)}


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from mixvlp_ds.text.tokenizer import train_tokenizer

    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=200, min_frequency=1)


@pytest.fixture(scope="session")
def tiny_mds(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mds")
    return {"a": write_tiny(root / "a", "a", 240, fmt="mds", seed=1),
            "b": write_tiny(root / "b", "b", 160, fmt="mds", with_text=False, seed=2)}
