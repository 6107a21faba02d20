"""`python -m mixvlp_ds.shard` end to end: help, the synthetic and NIH sources, errors and exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mixvlp_ds.shard import __main__ as cli
from mixvlp_ds.shard.index import read_index
from mixvlp_ds.shard.sources import SOURCES


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mixvlp_ds.shard", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_help_explains_every_source_and_option():
    proc = run("--help")
    assert proc.returncode == 0
    for name in SOURCES:
        assert f"  {name} " in proc.stdout
    assert "unavailable" not in proc.stdout
    for opt in ("--source", "--out", "--image-size", "--format", "--workers", "--shard-max-samples",
                "--shard-max-bytes", "--institution", "--seed"):
        assert opt in proc.stdout
    nih = run("--source", "nih", "--help")
    assert nih.returncode == 0 and "--nih-dir" in nih.stdout and "--mimic-dir" not in nih.stdout


def test_synthetic_end_to_end_is_reproducible(tmp_path):
    args = ["--source", "synthetic", "--num", "12", "--image-size", "64", "--workers", "2",
            "--shard-max-samples", "5", "--no-progress"]
    a = run(*args, "--out", tmp_path / "a")
    assert a.returncode == 0, a.stderr
    assert "train" in a.stdout and "rejects: none" in a.stdout
    index = read_index(tmp_path / "a", verify_sha256=True)
    assert index["totals"]["num_samples"] == 12 and index["source"].startswith("synthetic")
    assert index["args"]["source_args"]["num"] == 12
    b = run(*args, "--workers", "1", "--out", tmp_path / "b")
    assert b.returncode == 0, b.stderr
    for f in sorted((tmp_path / "a").iterdir()):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes(), f.name


def test_real_nih_images_in_process(shared_data, tmp_path, capsys):
    rc = cli.main(["--source", "nih", "--nih-dir", shared_data / "nih_cxr14", "--nih-images",
                   "images_original", "--image-size", "32", "--workers", "1", "--out", tmp_path])
    out = capsys.readouterr().out
    assert rc == 0
    index = read_index(tmp_path)
    assert index["totals"]["num_images"] == 20 and index["label_space"] == "cxr14"
    assert "note: image absent from disk" in out  # 112,100 metadata rows without an image here
    assert index["notes"]["image absent from disk"] == 112_120 - 20


def test_layout_error_exits_2_with_what_was_expected(tmp_path):
    proc = run("--source", "nih", "--nih-dir", tmp_path, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "expected" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_option_exits_2(tmp_path):
    proc = run("--source", "synthetic", "--num", "2", "--image-size", "30", "--out", tmp_path)
    assert proc.returncode == 2 and "divisible by 4" in proc.stderr


@pytest.fixture
def kit_source(monkeypatch):
    monkeypatch.setitem(SOURCES, "kit", "shard_testkit")


def test_nothing_written_exits_1_and_default_out_folder(kit_source, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "in"
    d.mkdir()
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert cli.main(["--source", "kit", "--kit-dir", d, "--institution", "north"]) == 1
    err = capsys.readouterr().err
    assert "nothing was written" in err and "expected" in err
    rejects = [json.loads(x) for x in (tmp_path / "shards/north/rejects.jsonl").read_text().splitlines()]
    assert rejects[0]["file"].endswith("broken.png")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(d / "ok.png")
    assert cli.main(["--source", "kit", "--kit-dir", d, "--institution", "north", "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "not_an_image" in out or "undecodable_image" in out
    assert read_index(tmp_path / "shards/north")["institution"] == "north"
