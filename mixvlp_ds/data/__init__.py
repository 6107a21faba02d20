"""Input pipeline: shards (local or S3) -> mixed (image, report, pair) batches, resumable exactly.

`collate` and `iter_samples` are imported from their modules (`mixvlp_ds.data.collate`,
`mixvlp_ds.data.reader`): re-exporting a function named like its submodule would be shadowed by
the submodule as soon as that is imported.
"""

from mixvlp_ds.data.config import DataConfig, SourceSpec
from mixvlp_ds.data.subset import in_paired_subset

__all__ = ["DataConfig", "SourceSpec", "build_pretrain_loader", "in_paired_subset"]


def __getattr__(name):  # lazy: importing the config must not import torch/PIL/boto3
    if name == "build_pretrain_loader":
        from mixvlp_ds.data.loader import build_pretrain_loader

        return build_pretrain_loader
    raise AttributeError(name)
