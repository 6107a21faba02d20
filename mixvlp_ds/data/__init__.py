"""Input pipeline: shards (local or S3) -> mixed (image, report, pair) batches, resumable exactly."""

from mixvlp_ds.data.config import DataConfig, SourceSpec
from mixvlp_ds.data.subset import in_paired_subset

__all__ = ["DataConfig", "SourceSpec", "build_pretrain_loader", "collate", "in_paired_subset", "iter_samples"]


def __getattr__(name):  # lazy: importing the config must not import torch/PIL/boto3
    if name == "build_pretrain_loader":
        from mixvlp_ds.data.loader import build_pretrain_loader

        return build_pretrain_loader
    if name == "collate":
        from mixvlp_ds.data.collate import collate

        return collate
    if name == "iter_samples":
        from mixvlp_ds.data.reader import iter_samples

        return iter_samples
    raise AttributeError(name)
