"""Assets for the application tests: a tiny labelled synthetic institution, its tokenizer, and a
tiny pre-trained-looking MixVLP directory (random weights saved with save_pretrained)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def apps_assets(tmp_path_factory) -> dict:
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
