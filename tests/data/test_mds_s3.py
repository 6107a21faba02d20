"""`data.backend: streaming` reading MDS shards from S3 (moto on 127.0.0.1): the batches equal the
local folder's, for 0 and 2 workers, and the download cache is used."""

import pytest

from mixvlp_ds.data import DataConfig, SourceSpec, build_pretrain_loader
from mixvlp_ds.data.batch import check_batch
from mixvlp_ds.model.config import ModelConfig

TINY = ModelConfig.preset("tiny")   # the model the batches are for: 32 px images, as the shards


def config(uris, workers, cache_dir=""):
    return DataConfig(sources=[SourceSpec("a", str(uris["a"])),
                               SourceSpec("b", str(uris["b"]), role="image_only")],
                      scenario="mixup2", paired_percent=30, batch_size=16, num_workers=workers,
                      backend="streaming", shuffle_buffer=40, image_pool=16, report_pool=32,
                      cache_dir=cache_dir)


def signature(batches):
    """Everything that identifies a batch: keys, report keys, pixels, token ids and masks."""
    return [(tuple(b["key"]), tuple(b["text_key"]), [lv.numpy().tobytes() for lv in b["pyramid"]],
             b["input_ids"].numpy().tobytes(), b["mlm_labels"].numpy().tobytes(), b["pair"].tolist())
            for b in batches]


@pytest.fixture
def mds_on_s3(s3_server, s3_bucket, tiny_mds):
    return s3_server.upload_folders(s3_bucket, {name: tiny_mds[name] for name in ("a", "b")}, "mds")


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_backend_reads_s3_like_local(mds_on_s3, tiny_mds, tokenizer, tmp_path, workers):
    local = list(build_pretrain_loader(config(tiny_mds, workers), tokenizer, seed=3, model=TINY))
    cache = tmp_path / "cache"
    remote = build_pretrain_loader(config(mds_on_s3, workers, str(cache)), tokenizer, seed=3, model=TINY)
    remote = list(remote)
    assert sum(check_batch(b) for b in remote) == 400
    assert signature(remote) == signature(local)
    assert sorted(p.name for p in (cache / "a" / "train").glob("*.mds"))  # downloaded into cache_dir
