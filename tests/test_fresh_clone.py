"""A newcomer's clone: no real test data anywhere (no $MIXVLP_TEST_DATA, no data/real/, nothing beside
the checkout). The real-data tests skip, saying how to fetch the data; under CI=true they fail.

The "clone" is a copy of the files git tracks plus the untracked ones it does not ignore (`git
ls-files -co --exclude-standard`), so it holds what is on disk, committed or not; ignored paths
(data/real/, shards/, runs/) stay behind, as in a clone. The copy sits two folders deep in tmp_path,
with nothing beside it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = ["tests/shard/test_images.py::test_real_dicom",
        "tests/shard/test_images.py::test_real_rgb_jpeg_is_luma",
        "tests/text/test_sections.py::test_mimic_example_sections",
        "tests/shard/test_source_nih.py::test_chexnet_split_lists",
        "tests/apps/test_hashing_openi.py::test_tfidf_baseline_on_real_openi_split"]
PLAIN = ["tests/shard/test_images.py::test_8bit_png_is_exact_and_sha1_is_of_the_file"]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        if os.environ.get("CI", "").lower() == "true":   # CI runs in a clone: never green by skipping
            pytest.fail("needs git and a git checkout")
        pytest.skip("needs git and a git checkout")
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    root = tmp_path_factory.mktemp("x") / "x" / "repo"
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():   # tracked but deleted on disk: not part of what is on disk
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / name)
    assert not (root.parent.parent / "shared").exists() and not (root / "data" / "real").exists()
    return root


def run(root: Path, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "MIXVLP_TEST_DATA", "PYTEST_ADDOPTS")}
    base.update(PYTHONPATH=str(root), **env)
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *REAL, *PLAIN]
    return subprocess.run(cmd, cwd=root, env=base, capture_output=True, text=True, timeout=300)


def test_real_data_tests_skip_with_the_fetch_command(clone):
    proc = run(clone)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"1 passed, {len(REAL)} skipped" in proc.stdout
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skips) == len(REAL)
    assert all("real test data missing: run `python scripts/fetch_test_data.py`" in s for s in skips)
    assert str(REPO) not in proc.stdout   # the copy's package and tests ran, not the checkout's


def test_real_data_tests_fail_under_ci(clone):
    proc = run(clone, CI="true")
    assert proc.returncode == 1
    assert f"1 passed, {len(REAL)} errors" in proc.stdout
    assert proc.stdout.count("Failed: real test data missing: run `python scripts/fetch_test_data.py`") \
        >= len(REAL)
