"""The MixVLP model: shared-encoder image-text transformer with UNIT / UWOX fusion and
multi-scale masked patch regeneration (see docs/model.md)."""

from mixvlp_ds.model.config import ARCHS, IMAGE_VARIANTS, ModelConfig
from mixvlp_ds.model.flops import flops_per_sample, mfu
from mixvlp_ds.model.masking import random_patch_masking
from mixvlp_ds.model.mixvlp import MixVLP
from mixvlp_ds.text.masking import mask_tokens, tokenizer_mask_args

__all__ = ["ARCHS", "IMAGE_VARIANTS", "ModelConfig", "MixVLP", "flops_per_sample", "mfu", "mask_tokens",
           "random_patch_masking", "tokenizer_mask_args"]
