#!/usr/bin/env python3
"""Fetch the real chest X-ray files the tests read, verify each against its sha256, and lay them
out as the tests expect (openi_iu/, labelers/, nih_cxr14/, samples_original/, mimic_cxr_format/).

    python scripts/fetch_test_data.py [--dest DIR] [--mirror URL] [--only GLOB ...] [--strict]

Where the files go: --dest, else $MIXVLP_TEST_DATA, else data/real/ in this checkout (ignored
by git: the files are fetched for testing and never committed; several are under non-commercial
or no-derivatives licences, listed in docs/test_data.md).

What is fetched is listed in scripts/test_data_manifest.json: each file's path under the data
folder, its upstream source and its sha256. Sources are of two kinds:

* a GitHub repository at a pinned commit: the file is read from
  https://raw.githubusercontent.com/<owner>/<repo>/<commit>/<path>;
* a file inside a PyPI wheel (torchxrayvision==1.5.7, radtext==1.0.dev2): the wheel is fetched
  with `python -m pip download --no-deps <requirement>` (the user's index and cache), or, when pip
  cannot, from https://files.pythonhosted.org/packages/py3/<letter>/<name>/<wheel>; its sha256 is
  checked against the manifest, then the member is read from it.

--mirror URL (or $MIXVLP_TEST_DATA_MIRROR) replaces every upstream host by one base URL that
serves the same layout: <mirror>/<owner>/<repo>/<commit>/<path> for GitHub files and
<mirror>/pypi/<wheel file name> for wheels. A mirror may repackage a wheel, so behind a mirror the
wheel's own sha256 is not checked; the members taken from it are.

A file already present with the expected sha256 is not fetched again. Every file is written to a
temporary name beside its final one, verified, then renamed: a checksum mismatch names the file,
the expected and the actual sha256, leaves nothing under the final name, and makes the script exit
with status 1 once the other files are done.

Derived files. Three kinds of file are not byte copies of an upstream file; the script derives
each one the way the collection was made, then verifies it:

* nih_cxr14/images_512/*.jpg: the 1024-px PNGs of jrzech/reproduce-chexnet (starter_images/),
  converted to 8-bit grayscale, resized to fit 512x512 with Lanczos and saved as JPEG quality 92
  (needs Pillow, a dependency of the project). The PNG is first checked against the sha1 the
  manifest gives for it (the collection's index records it). The JPEG bytes depend on the JPEG
  encoder: with the Pillow this project pins they are byte-identical to the manifest's sha256 (all
  621 are verified so). With another encoder the bytes can differ while the picture is the same;
  then the file is accepted as "derived: verified against the source's sha1" (the PNG matched, the
  JPEG is 8-bit gray and fits 512x512) with a warning, recorded in <dest>/.fetch_state.json so a
  later run does not redo it, and --strict makes that case an error instead.
* nih_cxr14/images_512_index.csv: one row per image, written from Data_Entry_2017_v2020.csv.gz,
  the CheXNet split lists and the per-image facts in the manifest (source mode, size, sha1); the
  bytes are deterministic and must match the sha256.
* mimic_cxr_format/example_report_from_MIT-LCP_docs.txt: the example report inside a code block
  of MIT-LCP/mimic-cxr's website/content/data/reports.md; the block that matches the sha256 is
  taken (fenced or indented blocks are tried), otherwise it is a checksum error.

--only GLOB (repeatable) fetches the manifest entries whose path matches one of the globs (plus
the inputs of a derived file selected). Exit status: 0 when every selected file is verified, 1 on
a checksum or download error, 2 on a usage error. Plain Python standard library, except Pillow
for the derived JPEGs.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).resolve().with_name("test_data_manifest.json")
GITHUB_RAW = "https://raw.githubusercontent.com"
PYPI_FILES = "https://files.pythonhosted.org/packages/py3"
STATE = ".fetch_state.json"


class ChecksumError(Exception):
    pass


def default_dest() -> Path:
    env = os.environ.get("MIXVLP_TEST_DATA")
    return Path(env) if env else REPO / "data" / "real"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Fetcher:
    def __init__(self, manifest: dict, dest: Path, mirror: str | None, strict: bool, log=print):
        self.sources, self.files = manifest["sources"], manifest["files"]
        self.by_path = {f["path"]: f for f in self.files}
        self.dest, self.strict, self.log = dest, strict, log
        self.mirror = mirror.rstrip("/") if mirror else None
        self.lock = threading.Lock()
        self.wheels: dict[str, zipfile.ZipFile] = {}
        self.wheel_locks = {name: threading.Lock() for name in self.sources}
        self.blobs: dict[str, bytes] = {}
        self.state_path = dest / STATE
        self.state = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        self.counts = {"present": 0, "fetched": 0, "derived": 0, "accepted": 0}
        self.errors: list[str] = []

    # -- download -------------------------------------------------------------------------------
    def url(self, source: dict, member: str) -> str:
        owner_repo = source["github"]
        tail = f"{owner_repo}/{source['commit']}/{urllib.parse.quote(member)}"
        return f"{self.mirror or GITHUB_RAW}/{tail}"

    def get(self, url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.read()

    def github(self, source: dict, member: str) -> bytes:
        url = self.url(source, member)
        with self.lock:
            if url in self.blobs:
                return self.blobs[url]
        data = self.get(url)
        with self.lock:
            if member.endswith(".png"):   # images_original/ and images_512/ share their PNGs
                self.blobs[url] = data
        return data

    def wheel(self, name: str) -> zipfile.ZipFile:
        source = self.sources[name]
        with self.wheel_locks[name]:
            if name in self.wheels:
                return self.wheels[name]
            fname = source["wheel"]
            if self.mirror:
                data = self.get(f"{self.mirror}/pypi/{urllib.parse.quote(fname)}")
            else:
                data = self.pip_download(source) or self.get(
                    f"{PYPI_FILES}/{fname[0]}/{fname.split('-')[0]}/{fname}")
                if sha256(data) != source["wheel_sha256"]:
                    raise ChecksumError(f"{fname}: sha256 expected {source['wheel_sha256']}, "
                                        f"got {sha256(data)}")
            self.wheels[name] = zipfile.ZipFile(io.BytesIO(data))
            return self.wheels[name]

    def pip_download(self, source: dict) -> bytes | None:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                                   "--only-binary", ":all:", "-d", tmp, source["requirement"]],
                                  capture_output=True, text=True)
            path = Path(tmp) / source["wheel"]
            if proc.returncode != 0 or not path.is_file():
                self.log(f"pip download {source['requirement']} failed; trying files.pythonhosted.org")
                return None
            return path.read_bytes()

    def raw(self, entry: dict) -> bytes:
        source = self.sources[entry["source"]]
        if "wheel" in source:
            return self.wheel(entry["source"]).read(entry["member"])
        return self.github(source, entry["member"])

    # -- one file --------------------------------------------------------------------------------
    def present(self, entry: dict) -> bool:
        path = self.dest / entry["path"]
        if not path.is_file():
            return False
        got = sha256_file(path)
        return got == entry["sha256"] or got == self.state.get(entry["path"])

    def write(self, entry: dict, data: bytes, accept_other: str | None = None) -> None:
        """Write to a temporary name, verify, rename. accept_other: a reason to keep bytes whose
        sha256 differs (a derived JPEG whose source was verified)."""
        final = self.dest / entry["path"]
        final.parent.mkdir(parents=True, exist_ok=True)
        got = sha256(data)
        if got != entry["sha256"] and accept_other is None:
            raise ChecksumError(f"{entry['path']}: sha256 expected {entry['sha256']}, got {got}")
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if sha256_file(Path(tmp)) != got:
                raise ChecksumError(f"{entry['path']}: the bytes written differ from those fetched")
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        with self.lock:
            if got != entry["sha256"]:
                self.state[entry["path"]] = got
                self.counts["accepted"] += 1
                self.log(f"warning: {entry['path']}: {accept_other}")
            else:
                self.state.pop(entry["path"], None)

    def one(self, entry: dict) -> None:
        try:
            if self.present(entry):
                with self.lock:
                    self.counts["present"] += 1
                return
            derive = entry.get("derive")
            if derive == "nih_512_jpeg":
                self.nih_512_jpeg(entry)
            elif derive == "markdown_code_block":
                self.markdown_code_block(entry)
            elif derive == "nih_512_index":
                self.nih_512_index(entry)
            else:
                self.write(entry, self.raw(entry))
            with self.lock:
                self.counts["derived" if derive else "fetched"] += 1
        except ChecksumError as e:
            self.failed(entry, f"checksum error: {e}")
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            self.failed(entry, f"{entry['path']}: could not fetch: {e}")

    def failed(self, entry: dict, message: str) -> None:
        # a file left under the final name from an earlier run is known not to match: remove it
        (self.dest / entry["path"]).unlink(missing_ok=True)
        with self.lock:
            self.errors.append(message)

    # -- derived files ---------------------------------------------------------------------------
    def nih_512_jpeg(self, entry: dict) -> None:
        png = self.raw(entry)
        got = hashlib.sha1(png).hexdigest()
        if got != entry["source_sha1"]:
            raise ChecksumError(f"{entry['path']}: its source {entry['member']} has sha1 expected "
                                f"{entry['source_sha1']}, got {got}")
        try:
            from PIL import Image
        except ImportError:
            raise OSError("deriving the 512-px JPEGs needs Pillow (pip install pillow)") from None
        img = Image.open(io.BytesIO(png)).convert("L")
        img.thumbnail((512, 512), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=92)
        data = buf.getvalue()
        if sha256(data) == entry["sha256"]:
            return self.write(entry, data)
        check = Image.open(io.BytesIO(data))
        if self.strict or check.mode != "L" or max(check.size) != 512:
            raise ChecksumError(f"{entry['path']}: sha256 expected {entry['sha256']}, got {sha256(data)} "
                                f"(derived from a verified source; this JPEG encoder gives other bytes)")
        self.write(entry, data, accept_other="derived: verified against the source's sha1 (this JPEG "
                                             "encoder gives other bytes than the manifest's)")

    def markdown_code_block(self, entry: dict) -> None:
        text = self.raw(entry).decode("utf-8")
        blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
        blocks += ["".join(line[4:] + "\n" for line in m.group(0).splitlines())
                   for m in re.finditer(r"(?:^(?: {4}|\t).*\n?)+", text, flags=re.M)]
        for block in blocks:
            for candidate in (block, block.rstrip("\n") + "\n", block.strip("\n") + "\n"):
                if sha256(candidate.encode()) == entry["sha256"]:
                    return self.write(entry, candidate.encode())
        raise ChecksumError(f"{entry['path']}: sha256 expected {entry['sha256']}, got no code block of "
                            f"{entry['member']} with it ({len(blocks)} blocks tried)")

    def nih_512_index(self, entry: dict) -> None:
        inputs = {name: self.dest / name for name in entry["inputs"]}
        missing = [n for n, p in inputs.items() if not p.is_file()]
        if missing:
            raise OSError(f"needs {', '.join(missing)} first")
        with gzip.open(inputs["nih_cxr14/Data_Entry_2017_v2020.csv.gz"], "rt", newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            meta = {row[0]: row for row in reader}
        split = {}
        for name, path in inputs.items():
            if name.endswith("_list.txt"):
                for line in path.read_text().splitlines():
                    if line.strip():
                        split[line.split()[0]] = Path(name).name[: -len("_list.txt")]
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["file", "image_index", "finding_labels", "follow_up", "patient_id", "age", "sex", "view",
                    "orig_w", "orig_h", "src_mode", "src_size", "chexnet_split", "src_sha1"])
        images = sorted((f for f in self.files if f.get("derive") == "nih_512_jpeg"), key=lambda f: f["path"])
        for f in images:
            index = Path(f["member"]).name
            row = meta[index]
            w.writerow([f"images_512/{Path(f['path']).name}", index, *row[1:9], f["source_mode"],
                        f["source_size"], split.get(index, ""), f["source_sha1"]])
        self.write(entry, out.getvalue().encode())

    # -- all -------------------------------------------------------------------------------------
    def select(self, only: list[str] | None) -> list[dict]:
        if not only:
            return list(self.files)
        chosen = {f["path"] for f in self.files if any(fnmatch.fnmatch(f["path"], g) for g in only)}
        for path in list(chosen):
            chosen.update(self.by_path[path].get("inputs", []))
        return [f for f in self.files if f["path"] in chosen]

    def run(self, entries: list[dict], jobs: int) -> int:
        self.dest.mkdir(parents=True, exist_ok=True)
        first = [e for e in entries if "inputs" not in e]
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            list(pool.map(self.one, first))
        for e in entries:
            if "inputs" in e:
                self.one(e)
        if self.state:
            self.state_path.write_text(json.dumps(self.state, indent=1, sort_keys=True) + "\n")
        elif self.state_path.exists():
            self.state_path.unlink()
        c = self.counts
        self.log(f"{len(entries)} files in {self.dest}: {c['present']} already present, "
                 f"{c['fetched']} fetched, "
                 f"{c['derived']} derived ({c['accepted']} verified against their source's sha1 only), "
                 f"{len(self.errors)} errors")
        for err in sorted(self.errors):
            self.log(err)
        return 1 if self.errors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=None,
                   help="data folder (default: $MIXVLP_TEST_DATA, else data/real/ in this checkout)")
    p.add_argument("--mirror", default=os.environ.get("MIXVLP_TEST_DATA_MIRROR"),
                   help="one base URL serving <owner>/<repo>/<commit>/<path> and pypi/<wheel> "
                        "(default: $MIXVLP_TEST_DATA_MIRROR, else the upstream hosts)")
    p.add_argument("--only", action="append", metavar="GLOB", help="fetch only the paths matching GLOB")
    p.add_argument("--strict", action="store_true",
                   help="a derived JPEG must match its sha256 byte for byte, whatever the JPEG encoder")
    p.add_argument("--jobs", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--manifest", type=Path, default=MANIFEST, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    dest = args.dest or default_dest()
    fetcher = Fetcher(manifest, dest, args.mirror, args.strict,
                      log=lambda msg: print(msg, file=sys.stderr, flush=True))
    entries = fetcher.select(args.only)
    if not entries:
        p.error(f"no manifest entry matches {args.only}")
    return fetcher.run(entries, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
