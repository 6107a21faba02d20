"""The labelled rows of the applications (fine-tuning, evaluation): a split's samples (the P%
patient subset for training), the rows one side can use, collated on demand through the data
pipeline's `collate`; where a pre-trained model directory is (local, or downloaded from S3); and the
check that a head and its evaluation shards share one label space."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mixvlp_ds.config import ConfigError


def fetch_model_dir(uri: str, cache: Path) -> Path:
    """A local MixVLP directory for `uri` (downloads every object under an s3:// prefix)."""
    from mixvlp_ds.storage import is_s3, parse_s3_uri, s3_client

    if not is_s3(uri):
        p = Path(uri)
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"{p} is not a MixVLP directory (no config.json); pre-training "
                                    "exports one to <output_dir>/model")
        return p
    u = parse_s3_uri(uri)
    s3 = s3_client()
    prefix = u.key().rstrip("/") + "/"
    dest = cache / u.bucket / prefix.strip("/")
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=u.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(u.bucket, obj["Key"], str(target))
            n += 1
    if not (dest / "config.json").is_file():
        raise FileNotFoundError(f"{uri}: no config.json among {n} objects (not a MixVLP directory)")
    return dest


def labelled_samples(uri: str, split: str, label_space: str | None = None, limit: int = 0,
                     percent: float = 100.0, subset_seed: int = 0) -> list[dict]:
    """Decoded labelled samples of one split, restricted to the P% patient subset (the one
    pre-training used: `mixvlp_ds.data.subset`) when percent < 100; `limit` 0 = all."""
    from mixvlp_ds.data.reader import iter_samples
    from mixvlp_ds.data.subset import in_paired_subset

    out = []
    for s in iter_samples(uri, split, label_space=label_space or None):
        if percent < 100 and not in_paired_subset(s["patient_id"], percent, subset_seed):
            continue
        out.append(s)
        if limit and len(out) >= limit:
            break
    if not out:
        subset = f" in the {percent}% subset" if percent < 100 else ""
        raise ValueError(f"{uri}: split {split!r} has no samples{subset}")
    return out


def usable(samples: list[dict], fusion: str, side: str) -> list[dict]:
    """Rows that carry what this side needs: UNIT needs both; UWOX img needs the image, txt the text."""
    need_img = side in ("img", "both") or fusion == "unit"
    need_txt = side in ("txt", "both") or fusion == "unit"
    return [s for s in samples if (s["pyramid"] is not None or not need_img)
            and (s["text"] is not None or not need_txt)]


class Rows:
    """Samples held in memory, collated on demand by row index."""

    def __init__(self, samples: list[dict], tokenizer, label_space: str, max_text_len: int, image_size: int):
        from mixvlp_ds.data.collate import BatchSpec

        self.samples, self.tok, self.space = samples, tokenizer, label_space
        self.spec = BatchSpec(label_space, image_size, max_text_len, pad_to_max=False)
        self.labels = np.stack([np.asarray(s["labels"], np.float32) for s in samples])

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, rows) -> dict:
        from mixvlp_ds.data.collate import collate

        return collate([self.samples[i] for i in rows], self.tok, self.spec)


def check_same_label_space(space: str, shards: str, what: str) -> None:
    """A head trained in one label space scored on shards labelled in another is an error (the
    findings would be matched by name and the rest silently count as unlabelled)."""
    from mixvlp_ds.data.reader import read_index

    theirs = read_index(shards).get("label_space", "none")
    if theirs != space:
        raise ConfigError(f"{what} uses label space {space!r}, but the evaluation shards {shards} are "
                          f"labelled in {theirs!r}: fine-tune and evaluate in one label space")
