"""Shared fixtures: offline environment, a real S3-compatible server on 127.0.0.1 (moto)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

# One thread per test process (and per process it starts): the suite runs beside other
# processes on 2 cores, where oversubscribed OpenMP threads spin-wait and tiny models run ~60x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

REPO = Path(__file__).resolve().parents[1]
# The real-data folder (real OpenI/NIH/DICOM files), searched in this order: $MIXVLP_TEST_DATA (when
# set it is the only place looked at), data/real/ in the checkout (where scripts/fetch_test_data.py
# puts them), ../shared/data beside the checkout. None when absent; the `shared_data` fixture then
# skips (fails under CI=true).
REAL_DATA_MISSING = "real test data missing: run `python scripts/fetch_test_data.py` (docs/test_data.md)"


def find_real_data() -> Path | None:
    env = os.environ.get("MIXVLP_TEST_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    for candidate in (REPO / "data" / "real", REPO.parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


SHARED_DATA = find_real_data()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of a server: `cut()` drops every connection and refuses new
    ones (a network outage), `freeze()` keeps every connection open and accepts new ones but forwards
    no byte any more (a server or network that stops answering: only timeouts notice), `restore()`
    forwards again / listens again on the same port; the server keeps its state."""

    def __init__(self, target_port: int):
        self.target, self.port = target_port, free_port()
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.frozen = threading.Event()

    def freeze(self) -> None:
        self.frozen.set()

    def restore(self) -> None:
        self.frozen.clear()
        if self.listener is not None:   # after freeze(): still listening, forwarding again
            return
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        with self.lock:
            listener, conns, self.listener, self.conns = self.listener, self.conns, None, []
        for sock in [listener, *conns]:
            try:
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if sock is not None:
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.frozen.is_set():   # held, not forwarded, connection left open
                    time.sleep(0.05)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class MotoServer:
    """`moto_server` as a subprocess on 127.0.0.1, reached through a TcpProxy.

    `cut()` / `restore()` make an outage that the server's state survives (the network is down, S3
    is not); `stop()` then `start()` restarts the server itself, which gives an empty server (tests
    that need data to survive a restart re-create the bucket and re-upload it)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proxy = TcpProxy(self.port)
        self.url = f"http://127.0.0.1:{self.proxy.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        self.proc = subprocess.Popen(cmd + ["-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.proxy.listener is None:
            self.proxy.restore()
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto_server exited at start") from None
                time.sleep(0.1)
        raise RuntimeError(f"moto_server did not answer on {self.url} within {timeout}s")

    def cut(self) -> None:
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=5)

    def client(self):
        from mixvlp_ds.storage import s3_client

        return s3_client(self.url, max_attempts=2)

    def upload_folders(self, bucket: str, folders: dict, prefix: str) -> dict:
        """Upload each local folder (recursively) to s3://bucket/<prefix>/<name>; returns {name: uri}."""
        client = self.client()
        for name, folder in folders.items():
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                client.upload_file(str(f), bucket, f"{prefix}/{name}/{f.relative_to(folder).as_posix()}")
        return {name: f"s3://{bucket}/{prefix}/{name}" for name in folders}


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server for the whole session; AWS_ENDPOINT_URL points at it."""
    server = MotoServer()
    server.start()
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = server.url
    os.environ["S3_ENDPOINT_URL"] = server.url
    yield server
    server.stop()
    if old is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = old


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the session's S3 server; yields its name."""
    s3_server.reset()
    name = f"test-{os.getpid()}-{time.time_ns() % 10**9}"
    s3_server.client().create_bucket(Bucket=name)
    yield name


def real_data_missing() -> None:
    """Skip the calling test for want of the real data, or fail it under CI=true (CI fetches it)."""
    env = os.environ.get("MIXVLP_TEST_DATA")
    reason = REAL_DATA_MISSING + (f"; MIXVLP_TEST_DATA={env} is not a folder" if env else "")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (SHARED_DATA above: $MIXVLP_TEST_DATA, data/real/, ../shared/data)."""
    if SHARED_DATA is None:
        real_data_missing()
    return SHARED_DATA


@pytest.fixture(scope="session")
def apps_assets(tmp_path_factory) -> dict:
    """A tiny labelled synthetic institution (openi-like: 80 records, train/test splits, 32 px), its
    tokenizer, and a tiny pre-trained-looking MixVLP directory (random weights, save_pretrained)."""
    from mixvlp_ds.data.reader import iter_samples
    from mixvlp_ds.model import MixVLP, ModelConfig
    from mixvlp_ds.shard.pipeline import ShardOptions, write_dataset
    from mixvlp_ds.shard.sources.synthetic import SyntheticSource
    from mixvlp_ds.text.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("apps")
    shards = root / "openi-like"
    write_dataset(SyntheticSource("openi-like", num=80, seed=1, splits=(0.6, 0.0, 0.4)), shards,
                  ShardOptions(image_size=32, shard_max_samples=40))
    texts = [s["text"] for s in iter_samples(str(shards), "train") if s["text"]]
    tok = train_tokenizer(texts, root / "tokenizer", vocab_size=300, min_frequency=1)
    cfg = ModelConfig.preset("tiny", arch="uwox", vocab_size=len(tok))
    model_dir = root / "pretrained"
    MixVLP(cfg).save_pretrained(model_dir, tok)
    return {"shards": str(shards), "tokenizer": str(root / "tokenizer"), "model": str(model_dir),
            "root": root}
