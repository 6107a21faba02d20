"""Assets for the training tests: tiny shards of two institutions, a tokenizer, a run config.

Institutions (32 px images, 16 samples per shard, written by the real shard writer):
    a (paired, chexpert14): 96 image+report records
    b (image_only):         48 images
DeepSpeed's first process group JIT-builds a C++ extension (~40 s): TORCH_EXTENSIONS_DIR points at
one cache directory that every test process (and later test run) reuses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.format import make_key
from mixvlp_ds.shard.source import SourceItem

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "mixvlp_torch_extensions"))
REPO = Path(__file__).resolve().parents[2]
WORDS = ("heart size normal lungs clear no effusion pneumothorax mild atelectasis left base "
         "cardiomegaly edema opacity right lobe stable tubes lines").split()


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)


class TinyInstitution:
    label_space = "chexpert14"

    def __init__(self, name: str, num: int, with_text: bool, seed: int):
        self.name, self.num, self.with_text, self.seed = name, num, with_text, seed

    def __len__(self) -> int:
        return self.num

    def items(self, rejects):
        import functools

        rng = np.random.default_rng(self.seed)
        for i in range(self.num):
            sid = f"{self.name}s{i}"
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 20)))) if self.with_text else None
            yield SourceItem(
                key=make_key(self.name, sid, f"im{i}"),
                meta={"institution": self.name, "patient_id": f"{self.name}p{i}", "study_id": sid,
                      "view": "PA", "split": "train"},
                text=text, labels={n: [1, 0, None][int(rng.integers(3))] for n in CHEXPERT14},
                image_fn=functools.partial(_image, self.seed * 10_000 + i))


@pytest.fixture(scope="session")
def train_assets(tmp_path_factory) -> dict:
    """{"shards": {a, b}, "tokenizer": dir, "config": a run YAML based on configs/tiny_cpu.yaml}."""
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.text.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("train_assets")
    opts = ShardOptions(image_size=32, shard_max_samples=16, workers=1)
    write_dataset(TinyInstitution("a", 96, True, 1), root / "a", opts)
    write_dataset(TinyInstitution("b", 48, False, 2), root / "b", opts)
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3
    train_tokenizer(texts, root / "tok", vocab_size=200, min_frequency=1)
    cfg = yaml.safe_load((REPO / "configs" / "tiny_cpu.yaml").read_text())
    cfg["tokenizer"] = str(root / "tok")
    cfg["data"]["sources"] = [{"name": "a", "uri": str(root / "a"), "role": "paired"},
                              {"name": "b", "uri": str(root / "b"), "role": "image_only"}]
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return {"shards": {"a": root / "a", "b": root / "b"}, "tokenizer": root / "tok",
            "config": root / "run.yaml"}
