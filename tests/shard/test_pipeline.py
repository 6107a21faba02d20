"""write_dataset: determinism (re-run, worker counts), interrupted writes, every bad input -> rejects."""

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import webdataset as wds
from shard_testkit import (
    ListSource,
    cmyk_jpeg,
    failing_image,
    item,
    mixed_items,
    palette_png,
    png16,
    rgba_png,
    truncated_jpeg,
    truncated_png,
)

from mixvlp_ds.shard.index import ShardIndexError, read_index
from mixvlp_ds.shard.pipeline import NothingWrittenError, ShardOptions, write_dataset

SMALL = dict(image_size=32, shard_max_samples=3)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return mixed_items(tmp_path_factory.mktemp("imgs"), 12)


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_byte_identical_on_rerun_and_across_worker_counts(tmp_path, items, fmt):
    runs = {}
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        opts = ShardOptions(format=fmt, workers=workers, chunksize=2, **SMALL)
        write_dataset(ListSource(items), tmp_path / name, opts)
        runs[name] = files(tmp_path / name)
    assert runs["a"] == runs["b"] == runs["c"]
    assert "index.json" in runs["a"] and not [f for f in runs["a"] if f.endswith(".tmp")]


def test_summary_and_index(tmp_path, items):
    summary = write_dataset(ListSource(items), tmp_path, ShardOptions(**SMALL))
    # mixed_items: splits train,train,val,test repeating; kinds file+text, generated image, text-only.
    assert summary["splits"]["train"] == {"samples": 6, "images": 4, "texts": 4, "shards": 2,
                                          "bytes": summary["splits"]["train"]["bytes"]}
    assert summary["total_samples"] == 12 and summary["rejects_total"] == 0
    index = read_index(tmp_path, verify_sha256=True)
    assert index["source"] == "kit" and index["institution"] == "kit" and index["format"] == "wds"
    assert index["label_space"] == "chexpert14" and len(index["label_names"]) == 14
    assert index["level_sizes"] == [32, 16, 8] and index["totals"]["num_samples"] == 12
    assert [s["file"] for s in index["splits"]["train"]["shards"]] == ["train-000000.tar", "train-000001.tar"]
    assert "workers" not in index["args"] and index["args"]["shard_max_samples"] == 3
    assert (tmp_path / "rejects.jsonl").read_text() == ""


def test_bad_inputs_are_converted_or_rejected_with_file_and_reason(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "garbage.png").write_bytes(b"not an image" * 20)
    (d / "empty.png").write_bytes(b"")
    good = [
        item(0, image_path=png16(d / "sixteen.png")),
        item(1, image_path=rgba_png(d / "rgba.png")),
        item(2, image_path=cmyk_jpeg(d / "cmyk.jpg")),
        item(3, image_path=palette_png(d / "palette.png")),
    ]
    bad = [
        (item(10, image_path=truncated_png(d / "trunc.png")), "truncated_image"),
        (item(11, image_path=truncated_jpeg(d / "trunc.jpg")), "truncated_image"),
        (item(12, image_path=d / "garbage.png"), "not_an_image"),
        (item(13, image_path=d / "empty.png"), "empty_file"),
        (item(14, image_path=d / "missing.png"), "missing_file"),
        (item(15, image_path=png16(d / "dup.png"), key=good[0].key), "duplicate_key"),
        (item(16, "validate", text="a report"), "unknown_split"),
        (item(17, text="a report", labels={"Not A Finding": 1}), "bad_labels"),
        (item(18, text="   \n"), "empty_record"),
        (item(19, image_fn=partial(failing_image, 19)), "image_failed"),
    ]
    src = ListSource(good + [b for b, _ in bad], source_rejects=[("non_utf8_report", "r.txt")])
    summary = write_dataset(src, tmp_path / "out", ShardOptions(image_size=32, workers=2, chunksize=3))
    assert summary["total_samples"] == 4
    expected = {}
    for _, reason in bad:
        expected[reason] = expected.get(reason, 0) + 1
    expected["non_utf8_report"] = 1
    assert summary["rejects"] == dict(sorted(expected.items()))
    lines = [json.loads(x) for x in (tmp_path / "out/rejects.jsonl").read_text().splitlines()]
    assert len(lines) == len(bad) + 1
    by_key = {x["key"]: x for x in lines}
    for it, reason in bad:
        rec = by_key[it.key] if reason != "duplicate_key" else [x for x in lines if x["reason"] == reason][0]
        assert rec["reason"] == reason
        if it.image_path:
            assert rec["file"] == it.image_path
    index = read_index(tmp_path / "out")
    assert index["rejects"]["total"] == len(bad) + 1
    # The 16-bit PNG was converted, and says so.
    metas = [json.loads(s["meta.json"]) for s in wds.WebDataset(
        [str(tmp_path / "out" / f["file"]) for f in index["splits"]["train"]["shards"]], shardshuffle=False)]
    assert [m["orig_bit_depth"] for m in metas] == [16, 8, 8, 8]
    # One worker gives the same shards and the same rejects.jsonl, line for line.
    write_dataset(src, tmp_path / "out1", ShardOptions(image_size=32, workers=1, chunksize=3))
    assert files(tmp_path / "out1") == files(tmp_path / "out")


def test_nothing_written_is_an_error_that_says_what_was_expected(tmp_path):
    src = ListSource([item(0, image_path=tmp_path / "nope.png")])
    with pytest.raises(NothingWrittenError, match="expected .*missing_file: 1"):
        write_dataset(src, tmp_path / "out", ShardOptions(image_size=32))
    assert not (tmp_path / "out/index.json").exists()
    assert json.loads((tmp_path / "out/rejects.jsonl").read_text())["reason"] == "missing_file"


@pytest.mark.parametrize("fmt", ["wds", "mds"])
def test_interrupted_run_leaves_nothing_that_looks_complete_and_rerun_completes(tmp_path, items, fmt):
    out = tmp_path / "out"
    opts = ShardOptions(format=fmt, **SMALL)
    with pytest.raises(RuntimeError, match="simulated source failure"):
        write_dataset(ListSource(items, fail_after=9), out, opts)
    assert not (out / "index.json").exists()
    with pytest.raises(ShardIndexError, match="interrupted"):
        read_index(out)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    write_dataset(ListSource(items), out, opts)
    write_dataset(ListSource(items), tmp_path / "fresh", opts)
    assert files(out) == files(tmp_path / "fresh")


def test_killed_process_leaves_only_temp_names(tmp_path):
    """SIGKILL mid-shard runs no cleanup at all: the partial shard still has its .tmp name."""
    out = tmp_path / "out"
    # 30 records, killed while listing the 21st: with 8 chunks of 1 in flight, ~12 are written.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import shard_testkit as k, pathlib;"
        "from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset;"
        "items = k.mixed_items(pathlib.Path(sys.argv[2]) / 'imgs', 30);"
        "write_dataset(k.ListSource(items, kill_after=20), sys.argv[2] + '/out',"
        " ShardOptions(image_size=32, shard_max_samples=3, chunksize=1))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    assert "index.json" not in names
    assert "train-000000.tar" in names and [n for n in names if n.endswith(".tar.tmp")], names
    with pytest.raises(ShardIndexError):
        read_index(out)
    write_dataset(ListSource(mixed_items(tmp_path / "imgs", 30)), out, ShardOptions(**SMALL))
    assert not [n for n in (p.name for p in out.iterdir()) if n.endswith(".tmp")]
    read_index(out, verify_sha256=True)


def test_rerun_with_fewer_shards_removes_stale_ones(tmp_path, items):
    write_dataset(ListSource(items), tmp_path, ShardOptions(image_size=32, shard_max_samples=1))
    assert (tmp_path / "train-000005.tar").exists()
    write_dataset(ListSource(items), tmp_path, ShardOptions(image_size=32, shard_max_samples=100))
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["test-000000.tar", "train-000000.tar",
                                                               "val-000000.tar"]
    (tmp_path / "unrelated.txt").write_text("user file")
    write_dataset(ListSource(items), tmp_path, ShardOptions(image_size=32))
    assert (tmp_path / "unrelated.txt").exists()


def test_read_index_errors_name_the_file(tmp_path, items):
    write_dataset(ListSource(items), tmp_path, ShardOptions(**SMALL))
    shard = tmp_path / "val-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-512])
    with pytest.raises(ShardIndexError, match="val-000000.tar has .* bytes"):
        read_index(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(ShardIndexError, match="index.json: not valid JSON"):
        read_index(tmp_path)


def test_options_are_validated():
    for bad in (dict(image_size=30), dict(format="parquet"), dict(workers=0), dict(shard_max_samples=0)):
        with pytest.raises(ValueError):
            ShardOptions(**bad).validate()
