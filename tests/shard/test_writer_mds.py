"""MDS writer: per-split folder, sample/byte limits, atomic folder rename, read back by streaming."""

import json

from mixvlp_ds.shard.writer_mds import MdsShardWriter, sample_to_row
from mixvlp_ds.streaming_compat import import_streaming

SIZES = (16, 8, 4)


def sample(i: int, with_text: bool = True) -> dict:
    s = {"__key__": f"inst/s{i:03d}/img", "img.16.png": b"A" * (100 + i), "img.8.png": b"B" * 50,
         "img.4.png": b"C" * 20, "labels.json": b'{"space":"none","values":{}}',
         "meta.json": json.dumps({"i": i}).encode()}
    if with_text:
        s["txt"] = f"report {i}".encode()
    return s


def write_all(out, n, max_samples=1000, max_bytes=1 << 30):
    w = MdsShardWriter(out, "train", max_samples, max_bytes, SIZES)
    for i in range(n):
        w.write(sample(i, with_text=i % 2 == 0))
    return w, w.close()


def test_layout_and_sample_limit(tmp_path):
    w, shards = write_all(tmp_path, 7, max_samples=3)
    assert [s.num_samples for s in shards] == [3, 3, 1]
    assert [s.file for s in shards] == [f"train/shard.0000{i}.mds" for i in range(3)]
    assert [f.file for f in w.extra_files] == ["train/index.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no temp folder left
    mds_index = json.loads((tmp_path / "train/index.json").read_text())
    assert [s["samples"] for s in mds_index["shards"]] == [3, 3, 1]


def test_byte_limit(tmp_path):
    _, shards = write_all(tmp_path, 30, max_bytes=1024)
    assert len(shards) > 3 and sum(s.num_samples for s in shards) == 30
    assert all(s.bytes <= 1024 for s in shards)


def test_deterministic(tmp_path):
    write_all(tmp_path / "a", 5, max_samples=2)
    write_all(tmp_path / "b", 5, max_samples=2)
    for f in sorted((tmp_path / "a/train").iterdir()):
        assert f.read_bytes() == (tmp_path / "b/train" / f.name).read_bytes(), f.name


def test_rows_read_back_with_streaming(tmp_path):
    write_all(tmp_path, 5, max_samples=2)
    streaming = import_streaming()
    ds = streaming.StreamingDataset(local=str(tmp_path / "train"), shuffle=False, batch_size=1)
    rows = [ds[i] for i in range(ds.num_samples)]
    assert [r["key"] for r in rows] == [f"inst/s{i:03d}/img" for i in range(5)]
    assert rows[0]["txt"] == "report 0" and rows[0]["has_text"] == 1
    assert rows[1]["txt"] == "" and rows[1]["has_text"] == 0
    assert rows[3]["img_16"] == b"A" * 103 and rows[3]["has_image"] == 1
    assert rows[2]["meta"] == {"i": 2} and rows[2]["labels"] == {"space": "none", "values": {}}


def test_text_only_row():
    s = {k: v for k, v in sample(0).items() if not k.startswith("img")}
    row = sample_to_row(s, SIZES)
    assert row["has_image"] == 0 and row["img_16"] == b"" and row["txt"] == "report 0"


def test_abort_removes_temp_folder(tmp_path):
    w = MdsShardWriter(tmp_path, "val", 2, 1 << 30, SIZES)
    for i in range(3):
        w.write(sample(i))
    assert (tmp_path / ".val.tmp").is_dir()
    w.abort()
    assert list(tmp_path.iterdir()) == []
