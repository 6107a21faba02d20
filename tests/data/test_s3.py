"""Reading shards from a real S3-compatible server on 127.0.0.1 (moto), with faults."""

import threading
import time

import pytest

from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data import s3 as data_s3
from mixvlp_ds.data.batch import check_batch
from mixvlp_ds.data.faults import DataFaultError, FaultCounter
from mixvlp_ds.data.reader import ShardRef, iter_samples, iter_shard
from mixvlp_ds.model.config import ModelConfig

TINY = ModelConfig.preset("tiny")   # the model the batches are for: 32 px images, as the shards


@pytest.fixture
def s3_shards(s3_server, s3_bucket, tiny_shards):
    return s3_server.upload_folders(s3_bucket, {name: tiny_shards[name] for name in ("a", "b")}, "shards")


def test_loader_reads_s3_like_local(s3_shards, tiny_shards, tokenizer):
    def cfg(uris, workers):
        return DataConfig(sources=[SourceSpec("a", str(uris["a"])),
                                   SourceSpec("b", str(uris["b"]), role="image_only")],
                          scenario="mixup2", paired_percent=30, batch_size=16, num_workers=workers)

    local = [b["key"] for b in build_pretrain_loader(cfg(tiny_shards, 0), tokenizer, model=TINY)]
    remote = build_pretrain_loader(cfg(s3_shards, 2), tokenizer, model=TINY)
    batches = list(remote)
    assert sum(check_batch(b) for b in batches) == 400
    assert sorted(k for keys in local for k in keys if k) == sorted(k for b in batches for k in b["key"] if k)
    samples = list(iter_samples(s3_shards["a"], "train"))
    assert len(samples) == 240 and samples[0]["pyramid"][2].shape == (8, 8)


class FlakyBody:
    """A response body that breaks once after `after` bytes (like a reset connection)."""

    def __init__(self, body, after):
        self.body, self.after, self.sent = body, after, 0

    def read(self, n=-1):
        if self.after is not None and self.sent >= self.after:
            raise ConnectionResetError("connection reset by peer (injected)")
        data = self.body.read(n if self.after is None else min(n, self.after - self.sent))
        self.sent += len(data)
        return data

    def close(self):
        self.body.close()


def test_broken_stream_resumes_at_its_byte(s3_shards, tiny_shards, monkeypatch):
    real = data_s3.client()
    calls = []

    class Client:
        def get_object(self, **kw):
            calls.append(kw.get("Range"))
            resp = real.get_object(**kw)
            resp["Body"] = FlakyBody(resp["Body"], 5000 if len(calls) == 1 else None)
            return resp

    monkeypatch.setattr(data_s3, "client", lambda: Client())
    url = s3_shards["a"] + "/train-000001.tar"
    reader = data_s3.S3RangeReader(url, retries=3, backoff=0.01)
    data = b"".join(iter(lambda: reader.read(1 << 16), b""))
    assert data == (tiny_shards["a"] / "train-000001.tar").read_bytes()
    assert reader.retried == 1 and calls == [None, "bytes=5000-"]


def test_server_down_briefly_is_retried(s3_server, s3_shards, tiny_shards):
    url = s3_shards["a"] + "/train-000002.tar"
    bucket = url.split("/")[2]
    s3_server.stop()

    def come_back():
        time.sleep(1.0)
        s3_server.start()
        s3_server.client().create_bucket(Bucket=bucket)
        s3_server.upload_folders(bucket, {"a": tiny_shards["a"]}, "shards")

    t = threading.Thread(target=come_back)
    t.start()
    try:
        faults = FaultCounter()
        recs = list(iter_shard(ShardRef("a", url, 25), faults, retries=8, backoff=0.25))
    finally:
        t.join()
    assert len(recs) == 25 and faults.skipped == 0


def test_server_down_for_good_fails_shards_then_aborts(s3_server, s3_shards, tokenizer):
    cfg = DataConfig(sources=[SourceSpec("a", s3_shards["a"])], scenario="baseline", batch_size=16,
                     num_workers=0, s3_retries=2, s3_backoff=0.01, max_skip_fraction=0.05,
                     min_records_before_abort=20)
    loader = build_pretrain_loader(cfg, tokenizer, model=TINY)  # index.json read while the server is up
    s3_server.stop()
    try:
        faults = FaultCounter(max_skip_fraction=1.0)
        assert list(iter_shard(ShardRef("a", s3_shards["a"] + "/train-000000.tar", 25), faults,
                               retries=2, backoff=0.01)) == []
        assert faults.skipped == 25 and faults.reasons["unreadable shard"] == 25
        with pytest.raises(DataFaultError, match="unreadable shard"):
            list(loader)
    finally:
        s3_server.start()
