"""Bad records and shards are skipped with counts; too many abort the run."""

import io
import json
import logging
import shutil
import tarfile

import pytest

from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data.batch import check_batch
from mixvlp_ds.data.faults import DataFaultError
from mixvlp_ds.data.reader import iter_samples
from mixvlp_ds.model.config import ModelConfig

TINY = ModelConfig.preset("tiny")   # the model the batches are for: 32 px images, as the shards


def rewrite_shard(folder, name, edit):
    """Apply edit(list of (TarInfo, bytes)) -> list to one tar, and fix index.json's byte count."""
    path = folder / name
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = edit(members)
    with tarfile.open(path, "w") as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    fix_index(folder, name)


def fix_index(folder, name):
    index = json.loads((folder / "index.json").read_text())
    for s in index["splits"]["train"]["shards"]:
        if s["file"] == name:
            s["bytes"] = (folder / name).stat().st_size
    (folder / "index.json").write_text(json.dumps(index))


@pytest.fixture
def damaged(tiny_shards, tmp_path):
    """Shards of institution a with a bad PNG, bad meta.json, a missing labels.json and one tar cut short."""
    a = tmp_path / "a"
    shutil.copytree(tiny_shards["a"], a)

    def edit(members):
        out = []
        for m, data in members:
            if m.name.endswith("im0.img.32.png"):
                data = b"\x89PNG not really"
            elif m.name.endswith("im1.meta.json"):
                data = b"{broken"
            elif m.name.endswith("im2.labels.json"):
                continue
            out.append((m, data))
        return out

    rewrite_shard(a, "train-000000.tar", edit)
    tar = a / "train-000003.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    fix_index(a, "train-000003.tar")
    return a


def loader_for(folder, tokenizer, limit, workers=0):
    cfg = DataConfig(sources=[SourceSpec("a", str(folder))], scenario="baseline", paired_percent=100,
                     batch_size=16, num_workers=workers, max_skip_fraction=limit,
                     min_records_before_abort=50, shuffle_buffer=20)
    return build_pretrain_loader(cfg, tokenizer, model=TINY)


def test_skips_are_counted_and_named(damaged, tokenizer, caplog):
    loader = loader_for(damaged, tokenizer, limit=0.2)
    with caplog.at_level(logging.WARNING, logger="mixvlp_ds.data"):
        rows = sum(check_batch(b) for b in loader)
    summary = loader.fault_summary()
    assert summary["seen"] == 240
    # a record cut inside the truncated tar may arrive without its txt: routed as "incomplete"
    incomplete = summary["routing"][0].get("incomplete", 0)
    assert rows + summary["skipped"] + incomplete == 240 and incomplete <= 1
    reasons = summary["by_worker"][0]["reasons"]
    assert reasons["bad PNG img.32.png"] == 1 and reasons["bad meta.json"] == 1
    assert reasons["missing field labels.json"] == 1
    assert reasons["truncated shard"] + reasons.get("unreadable shard", 0) >= 12
    text = caplog.text
    assert "train-000000.tar key a/as0/im0" in text and "train-000003.tar" in text


def test_too_many_skips_abort_with_a_clear_error(damaged, tokenizer):
    with pytest.raises(DataFaultError, match=r"records skipped .* max_skip_fraction"):
        sum(1 for _ in loader_for(damaged, tokenizer, limit=0.02))


def test_abort_propagates_from_worker_processes(damaged, tokenizer):
    with pytest.raises(Exception, match="max_skip_fraction"):
        sum(1 for _ in loader_for(damaged, tokenizer, limit=0.02, workers=2))


def test_iter_samples_skips_and_limits(damaged):
    samples = list(iter_samples(str(damaged), "train", max_skip_fraction=0.2))
    assert 200 < len(samples) < 240
    s = samples[0]
    assert s["pyramid"][0].shape == (32, 32) and s["labels"].shape == (14,) and isinstance(s["text"], str)
    with pytest.raises(DataFaultError):
        list(iter_samples(str(damaged), "train", max_skip_fraction=0.01))
