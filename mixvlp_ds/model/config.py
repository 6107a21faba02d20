"""ModelConfig: every size and switch of the MixVLP model, with the paper's variants as presets.

    cfg = ModelConfig.preset("bert-base")                              # UWOX, ms_B8, 12 x 768
    cfg = ModelConfig.preset("bert-base", arch="unit", image="ms_B16")
    cfg = ModelConfig.preset("tiny", arch="aiayn-image")               # ss_B16-like, tiny sizes
    cfg = ModelConfig.preset("tiny", hidden=64)                        # any field as an override

The `-cls` rows of the paper's Table 1 (UNIT-cls, UWOX-cls) are the same configurations used
without pre-training: nothing here differs, the fine-tuning code simply starts from random weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from mixvlp_ds.config import ConfigError
from mixvlp_ds.text.masking import masked_word_budget

# Image variants of docs/method.md's table (paper Table 4b): image size S, block size B, scales.
IMAGE_VARIANTS: dict[str, dict[str, Any]] = {
    "ms_B8": dict(image_size=224, block_size=8, multiscale=True),
    "ms_B16": dict(image_size=256, block_size=16, multiscale=True),
    "ms_B24": dict(image_size=288, block_size=24, multiscale=True),
    "ms_B32": dict(image_size=256, block_size=32, multiscale=True),
    "ss_B16": dict(image_size=256, block_size=16, multiscale=False),
}

# Architectures of the paper, all built from the same parts.
ARCHS: dict[str, dict[str, Any]] = {
    "uwox": dict(fusion="uwox", use_text=True, use_image=True),
    "unit": dict(fusion="unit", use_text=True, use_image=True),
    "aiayn-text": dict(fusion="none", use_text=True, use_image=False),    # BERT-like text MLM only
    "aiayn-image": dict(fusion="none", use_text=False, use_image=True,    # ViT-like patch prediction
                        **IMAGE_VARIANTS["ss_B16"]),
}

SIZES: dict[str, dict[str, Any]] = {
    "bert-base": dict(vocab_size=30522, hidden=768, layers=12, heads=12, intermediate=3072),
    # Small enough for CPU tests: 32x32 images, 4x4 blocks -> 64 + 16 + 4 patches.
    "tiny": dict(vocab_size=512, hidden=32, layers=2, heads=2, intermediate=64, image_size=32,
                 block_size=4, dropout=0.0, attention_dropout=0.0),
}


@dataclass
class ModelConfig:
    """Every size and switch of the model, and the values the data pipeline builds its batches to:
    what a batch holds (use_image, use_text), the image size, the report length and both mask
    ratios have this config as their one owner (`mixvlp_ds.data.collate.BatchSpec.for_model`)."""

    # --- transformer sizes (BERT-base by default) ---
    vocab_size: int = 30522             # word embeddings and word-head outputs (>= the tokenizer's size)
    hidden: int = 768                   # C: width of every token, word or patch
    layers: int = 12                    # shared encoder blocks
    heads: int = 12                     # attention heads per block (hidden must divide by it)
    intermediate: int = 3072            # feed-forward width of an encoder block
    dropout: float = 0.1                # on embeddings, attention outputs and feed-forward outputs
    attention_dropout: float = 0.1      # on the attention probabilities
    layer_norm_eps: float = 1e-12       # every LayerNorm's epsilon (BERT's)
    max_text_len: int = 150             # tokens per report incl. [CLS]/[SEP]: position table and batch length
    # --- image ---
    image_size: int = 224               # S: finest level in px (pyramid S, S/2, S/4), as the shards
    block_size: int = 8                 # patch side in px at every level
    multiscale: bool = True             # encode all three levels (ms_*); False: the finest only (ss_*)
    # --- architecture ---
    fusion: Literal["unit", "uwox", "none"] = "uwox"  # cross-modal fusion; none: one modality (AIAYN)
    use_text: bool = True               # the model reads reports: batches carry tokens and word masks
    use_image: bool = True              # the model reads images: batches carry pyramids and patch masks
    # A LayerNorm after eq. 1/2's sum of two normalised terms. On by default: BERT's layers
    # (used to initialise the shared encoder) expect LayerNorm'd inputs, and it makes the text
    # side exactly a Hugging Face BertModel for export. False = eq. 1/2 to the letter (no export).
    embedding_norm: bool = True         # LayerNorm of the embedding sum (see above)
    # --- pre-training objectives ---
    text_mask_ratio: float = 0.15       # share of a report's words masked (data pipeline); max_masked_words
    image_mask_ratio: float = 0.15      # share of each level's patches masked (data pipeline)
    weight_txt: float = 1.0             # L_txt's weight in the loss
    weight_img: float = 1.0             # L_img's weight in the loss
    weight_co: float = 1.0              # L_co's weight in the loss
    # L_co's tuples. "tuple": eq. 9 as docs/method.md reads it, one BCE per row against its own label.
    # "batch": DEPARTS FROM THE PAPER (docs/synthetic_results.md, "Pair matching"): the same head
    # scores every true pair's image of the micro-batch against every true pair's report of it
    # (I_pair is linear in each side's features, so the B x B logits cost two matrix products); its
    # own report (or the same words) is the positive, the others negatives, and positives and
    # negatives weigh half each (sigmoid loss over all pairs, as SigLIP); re-paired rows stay out
    # (losses.batch_pair_loss). With "tuple" the head stays at chance even as the only loss
    # (measured); with "batch" it learns.
    pair_loss: Literal["tuple", "batch"] = "tuple"  # L_co per row, or over the batch's pairs (see above)
    # --- decoder (multi-scale: one block per level; single scale: MLP only, as AIAYN) ---
    decoder_intermediate: int = 0      # feed-forward width of a decoder block; 0 = same as `intermediate`
    # "attention": eqs. 12-13 as docs/method.md reads them (a finer level reads the coarser one through
    # cross-attention only); "unpool": each finer query also receives its parent coarse token's
    # decoded feature, unpooled to its quadrant (a learned 2x2 transposed projection), see decoder.py
    decoder_top_down: Literal["attention", "unpool"] = "attention"  # coarse-to-fine path (see above)
    decoder_pixel_skip: bool = False   # the pixel MLP predicts the correction to the upsampled mid level
    pixel_head_hidden: int = 0         # hidden width of the pixel MLP; 0 = same as `hidden`
    # --- memory ---
    activation_checkpointing: bool = False  # recompute encoder blocks in backward: less memory

    @classmethod
    def preset(cls, size: str = "bert-base", *, arch: str | None = None, image: str | None = None,
               **overrides: Any) -> ModelConfig:
        """A config from a size ("bert-base" | "tiny"), an architecture (ARCHS) and an image
        variant (IMAGE_VARIANTS), then field overrides; validated."""
        if size not in SIZES:
            raise ConfigError(f"unknown model size {size!r}; known: {sorted(SIZES)}")
        values: dict[str, Any] = dict(SIZES[size])
        if arch is not None:
            if arch not in ARCHS:
                raise ConfigError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
            values.update(ARCHS[arch])
            if size == "tiny" and arch == "aiayn-image":    # keep tiny images tiny
                values.update(image_size=32, block_size=4)
        if image is not None:
            if image not in IMAGE_VARIANTS:
                raise ConfigError(f"unknown image variant {image!r}; known: {sorted(IMAGE_VARIANTS)}")
            values.update(IMAGE_VARIANTS[image])
        values.update(overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {sorted(unknown)}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.hidden % self.heads:
            raise ConfigError(f"model.hidden={self.hidden} is not divisible by model.heads={self.heads}")
        if not (self.use_text or self.use_image):
            raise ConfigError("model.use_text and model.use_image are both false")
        if self.fusion in ("unit", "uwox") and not (self.use_text and self.use_image):
            raise ConfigError(f"fusion={self.fusion!r} needs both modalities; use fusion='none' for "
                              "the single-modality AIAYN baselines")
        if self.fusion not in ("unit", "uwox", "none"):
            raise ConfigError(f"model.fusion={self.fusion!r} is not one of unit, uwox, none")
        levels = self.level_sizes()
        for s in levels:
            if s % self.block_size:
                raise ConfigError(f"image level of {s} px is not divisible by block_size={self.block_size} "
                                  f"(image_size={self.image_size}, multiscale={self.multiscale})")
        if self.image_size % 4:
            raise ConfigError(f"model.image_size={self.image_size} must be divisible by 4 (3-level pyramid)")
        for name in ("text_mask_ratio", "image_mask_ratio", "dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ConfigError(f"model.{name}={v} must be in [0, 1)")
        if not 2 <= self.max_text_len <= 512:
            raise ConfigError(f"model.max_text_len={self.max_text_len} must be in [2, 512]")
        if self.pair_loss not in ("tuple", "batch"):
            raise ConfigError(f"model.pair_loss={self.pair_loss!r} is not tuple or batch")
        if self.decoder_top_down not in ("attention", "unpool"):
            raise ConfigError(f"model.decoder_top_down={self.decoder_top_down!r} is not attention or unpool")
        if not self.multiscale and (self.decoder_top_down != "attention" or self.decoder_pixel_skip):
            raise ConfigError("model.decoder_top_down / decoder_pixel_skip need the multi-scale decoder "
                              "(a single-scale model has no coarser level)")

    # --- derived sizes ---
    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_dim(self) -> int:
        """Pixels per flattened patch, B*B."""
        return self.block_size * self.block_size

    @property
    def position_dim(self) -> int:
        """Length of a patch's position vector: 6 with scale (multi-scale), 4 without."""
        return 6 if self.multiscale else 4

    def level_sizes(self) -> tuple[int, ...]:
        """Side length of each encoded image level, finest first: (S, S/2, S/4) or (S,)."""
        s = self.image_size
        return (s, s // 2, s // 4) if self.multiscale else (s,)

    def patches_per_level(self) -> tuple[int, ...]:
        """Patch count per level, finest first, e.g. (784, 196, 49) for ms_B8."""
        return tuple((s // self.block_size) ** 2 for s in self.level_sizes())

    @property
    def max_masked_words(self) -> int:
        """Masked words per row the word head reads (BERT's max_predictions_per_seq)."""
        return masked_word_budget(self.max_text_len, self.text_mask_ratio)

    @property
    def num_patches(self) -> int:
        """All image tokens of one image (1029 for ms_B8)."""
        return sum(self.patches_per_level())
