"""benchmarks/data_bench.py on real NIH pyramids: `--shards DIR` times them from disk and from the
local S3 server beside the synthetic rows, and writes rows older readers of the JSON still read.
Timings are not asserted (the machine is shared); the counts and the CPU accounting are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "data_bench.py"
# the keys of the rows before given shards could be timed: older readers of data_bench.json read these
ROW_KEYS = {"source", "workers", "samples", "seconds", "first_batch_s", "samples_per_s", "per_worker",
            "steady_per_worker", "cpu_s", "cpu_per_sample_ms", "per_cpu_s"}


def tiny_real_nih(shared_data: Path, root: Path, n: int) -> Path:
    """The first n real NIH images (a folder of links next to the real metadata), sharded at 224 px
    in one split, 16 samples per shard: two shards, so both reading paths cross a shard boundary."""
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.shard.sources._files import SplitRule
    from mixvlp_ds.shard.sources.nih import NIHSource

    nih = shared_data / "nih_cxr14"
    layout = root / "nih"
    (layout / "images_512").mkdir(parents=True)
    (layout / "Data_Entry_2017_v2020.csv.gz").symlink_to(nih / "Data_Entry_2017_v2020.csv.gz")
    for image in sorted((nih / "images_512").glob("*.jpg"))[:n]:
        (layout / "images_512" / image.name).symlink_to(image)
    out = root / "nih-224"
    source = NIHSource(layout, image_glob="images_512", split=SplitRule(val_fraction=0.0, test_fraction=0.0))
    summary = write_dataset(source, out, ShardOptions(image_size=224, shard_max_samples=16, workers=1,
                                                      progress=False))
    assert summary["total_samples"] == n
    return out


def run_bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, str(BENCH), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_given_real_nih_shards_are_timed_from_disk_and_s3_beside_the_synthetic(shared_data, tmp_path):
    shards = tiny_real_nih(shared_data, tmp_path, 32)
    out = tmp_path / "data_bench.json"
    proc = run_bench("--shards", str(shards), "--samples", "32", "--workers", "0", "--passes", "1",
                     "--repeats", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = {(r["data"], r["source"]): r for r in result["rows"]}
    assert set(rows) == {(d, s) for d in ("synthetic mimic-like", "nih shards")
                         for s in ("local", "s3 (moto, 127.0.0.1)")}
    for (data, _), r in rows.items():
        assert ROW_KEYS <= set(r) and r["workers"] == 0
        assert r["per_cpu_s"] > 0 and r["warm_per_cpu_s"] > 0
        # per CPU-second and CPU ms per sample are one measurement
        assert abs(r["per_cpu_s"] * r["cpu_per_sample_ms"] / 1e3 - 1) < 0.02
        if data == "nih shards":
            # an image-only source alone: every real image once per epoch, from either place, padding excluded
            assert r["samples"] == r["warm_samples"] == 32
            assert r["shards"] == str(shards)
    assert result["target_per_worker"] == 620 and result["rows"][0]["data"] == "synthetic mimic-like"
    assert "| nih shards | s3 (moto, 127.0.0.1) | 0 |" in proc.stdout


def test_real_nih_without_the_fetched_data_names_the_fetch_command(tmp_path):
    proc = run_bench("--real-nih", "--out", str(tmp_path / "x.json"),
                     env={"MIXVLP_TEST_DATA": str(tmp_path / "absent")})
    assert proc.returncode != 0
    assert "python scripts/fetch_test_data.py" in proc.stderr
    assert not (tmp_path / "x.json").exists()
