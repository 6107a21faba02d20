"""The shard sample format, read back by plain `webdataset` and by `streaming` (what readers rely on)."""

import io
import json

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from shard_testkit import ListSource, mixed_items

from mixvlp_ds.labels import CHEXPERT14
from mixvlp_ds.shard.format import META_FIELDS, image_field, label_values, level_sizes
from mixvlp_ds.shard.index import read_index, shard_paths
from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
from mixvlp_ds.streaming_compat import import_streaming


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return mixed_items(tmp_path_factory.mktemp("imgs"), 12)


def check_record(key, images: dict, txt, labels, meta, src, size):
    """images: {level size: png bytes} (empty for text-only); txt: str or None; labels/meta: dicts."""
    assert key == src.key
    if src.has_image:
        assert sorted(images) == sorted(level_sizes(size))
        for s, png in images.items():
            im = Image.open(io.BytesIO(png))
            assert im.format == "PNG" and im.mode == "L" and im.size == (s, s)
        assert meta["orig_bit_depth"] == 8 and meta["source_sha1"] and len(meta["source_sha1"]) == 40
        h, w = (np.asarray(Image.open(src.image_path)).shape if src.image_path else (96, 80))
        assert (meta["orig_height"], meta["orig_width"]) == (h, w)
        assert meta["source_file"] == src.image_path
    else:
        assert images == {}
        assert meta["orig_width"] is None and meta["orig_bit_depth"] is None
    assert txt == src.text
    assert labels == {"space": "chexpert14", "values": label_values("chexpert14", src.labels)}
    assert sorted(labels["values"]) == sorted(CHEXPERT14)
    assert set(META_FIELDS) <= set(meta)
    for k in ("institution", "patient_id", "study_id", "view", "split"):
        assert meta[k] == src.meta[k]


@pytest.mark.parametrize("size", [64, 224])
def test_webdataset_reads_every_field(tmp_path, items, size):
    write_dataset(ListSource(items), tmp_path, ShardOptions(image_size=size, shard_max_samples=4))
    index = read_index(tmp_path)
    by_key = {it.key: it for it in items}
    seen = []
    for split in ("train", "val", "test"):
        urls = [str(p) for p in shard_paths(tmp_path, split, index)]
        for sample in wds.WebDataset(urls, shardshuffle=False):
            fields = {k for k in sample if not k.startswith("__")} | {"__key__"}
            images = {s: sample[image_field(s)] for s in level_sizes(size) if image_field(s) in sample}
            allowed = {"__key__", "txt", "labels.json", "meta.json"} | {image_field(s) for s in images}
            assert fields <= allowed and {"labels.json", "meta.json"} <= fields
            src = by_key[sample["__key__"]]
            meta = json.loads(sample["meta.json"])
            assert meta["split"] == split
            txt = sample["txt"].decode("utf-8") if "txt" in sample else None
            check_record(sample["__key__"], images, txt, json.loads(sample["labels.json"]), meta, src, size)
            seen.append(sample["__key__"])
    assert sorted(seen) == sorted(by_key)
    # Pixel check: a decoded finest level equals the pyramid of the source image.
    from mixvlp_ds.shard.images import load_image
    from mixvlp_ds.shard.pyramid import make_pyramid

    first = next(iter(wds.WebDataset(str(shard_paths(tmp_path, "train", index)[0]), shardshuffle=False)))
    expected = make_pyramid(load_image(by_key[first["__key__"]].image_path).pixels, size)[0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(first[image_field(size)]))), expected)


def test_streaming_reads_every_column(tmp_path, items):
    size = 64
    opts = ShardOptions(image_size=size, format="mds", shard_max_samples=4)
    write_dataset(ListSource(items), tmp_path, opts)
    index = read_index(tmp_path, verify_sha256=True)
    assert index["format"] == "mds"
    assert index["splits"]["train"]["extra_files"][0]["file"] == "train/index.json"
    streaming = import_streaming()
    by_key = {it.key: it for it in items}
    seen = []
    for split in ("train", "val", "test"):
        ds = streaming.StreamingDataset(local=str(tmp_path / split), shuffle=False, batch_size=1)
        assert ds.num_samples == index["splits"][split]["num_samples"]
        for i in range(ds.num_samples):
            row = ds[i]
            src = by_key[row["key"]]
            images = {s: row[f"img_{s}"] for s in level_sizes(size)} if row["has_image"] else {}
            assert row["has_image"] == int(src.has_image)
            txt = row["txt"] if row["has_text"] else None
            check_record(row["key"], images, txt, row["labels"], row["meta"], src, size)
            seen.append(row["key"])
    assert sorted(seen) == sorted(by_key)
