"""WebDataset tar writer: size limits, reproducible tar headers, atomic rename, abort."""

import hashlib
import tarfile

import numpy as np
import webdataset as wds

from mixvlp_ds.shard.writer_wds import WdsShardWriter


def sample(i: int, payload: int = 3000, key: str | None = None) -> dict:
    rng = np.random.default_rng(i)
    return {"__key__": key or f"inst/s{i:03d}/img", "img.224.png": rng.bytes(payload),
            "meta.json": b'{"i":%d}' % i, "labels.json": b"{}", "txt": f"report {i}".encode()}


def write_all(out, samples, **kw):
    w = WdsShardWriter(out, "train", kw.get("max_samples", 1000), kw.get("max_bytes", 1 << 30))
    for s in samples:
        w.write(s)
    return w.close()


def test_sample_limit_names_counts_and_checksums(tmp_path):
    shards = write_all(tmp_path, [sample(i) for i in range(7)], max_samples=3)
    assert [s.file for s in shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert [s.num_samples for s in shards] == [3, 3, 1]
    for s in shards:
        data = (tmp_path / s.file).read_bytes()
        assert s.bytes == len(data) and s.sha256 == hashlib.sha256(data).hexdigest()
    assert not list(tmp_path.glob("*.tmp"))


def test_byte_limit(tmp_path):
    limit = 64 * 1024
    shards = write_all(tmp_path, [sample(i, payload=10_000) for i in range(20)], max_bytes=limit)
    assert len(shards) > 2 and sum(s.num_samples for s in shards) == 20
    assert all(s.bytes <= limit for s in shards)


def test_members_are_reproducible_and_sorted(tmp_path):
    for d in "ab":
        (tmp_path / d).mkdir()
        write_all(tmp_path / d, [sample(i) for i in range(4)])
    a, b = (tmp_path / d / "train-000000.tar" for d in "ab")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tf:
        members = tf.getmembers()
    assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == "" and m.mode == 0o444 for m in members)
    first = [m.name for m in members[:4]]
    assert first == sorted(first) and first[0] == "inst/s000/img.img.224.png"


def test_long_keys_read_back_with_webdataset(tmp_path):
    key = "inst/" + "x" * 150 + "/img"
    write_all(tmp_path, [sample(0, key=key), sample(1)])
    got = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False))
    assert [g["__key__"] for g in got] == [key, "inst/s001/img"]
    assert got[0]["txt"] == b"report 0"


def test_abort_leaves_only_complete_shards(tmp_path):
    w = WdsShardWriter(tmp_path, "val", 2, 1 << 30)
    for i in range(3):
        w.write(sample(i))
    w.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val-000000.tar"]
