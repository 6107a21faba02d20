"""Analytic FLOPs of one pre-training sample (forward + backward), for throughput and MFU reports.

Counts matrix multiplications only (2 FLOPs per multiply-add), the convention of
`torch.utils.flop_counter.FlopCounterMode`, which a test checks this against. A sample is one
full tuple as the model reads it: an image (every level it encodes) if `use_image`, a
`text_len`-token report if `use_text`; a side the model does not read costs nothing.

Backward costs 2x forward for every matmul (input and weight gradients), except the two
embedding projections whose inputs (pixels, patch positions) need no gradient (1x), and the
attention core, where flash/memory-efficient kernels recompute the scores: 2.5x forward on GPU
(what FlopCounterMode counts there); the plain "math" attention costs 2x.
"""

from __future__ import annotations

from mixvlp_ds.model.config import ModelConfig


def _linear(n: float, fan_in: int, fan_out: int) -> float:
    return 2.0 * n * fan_in * fan_out


def _block(cfg: ModelConfig, nq: float, nk: float, inter: int | None = None) -> tuple[float, float]:
    """(projection + FFN FLOPs, attention-core FLOPs) of one block, nq queries over nk keys."""
    c, i = cfg.hidden, inter or cfg.intermediate
    dense = _linear(nq, c, c) * 2 + _linear(nk, c, c) * 2 + _linear(nq, c, i) + _linear(nq, i, c)
    core = 2.0 * nq * nk * c * 2          # Q K^T and (softmax) V
    return dense, core


def forward_flops(cfg: ModelConfig, text_len: int | None = None,
                  masked_words: float | None = None) -> dict[str, float]:
    """Forward FLOPs of one sample by kind: 'dense' (matmuls with weights), 'attention' (the
    attention core), 'input' (the two patch-embedding projections)."""
    length = text_len or cfg.max_text_len
    masked = min(cfg.max_masked_words, length) if masked_words is None else masked_words
    dense = attn = inputs = 0.0

    def add(block: tuple[float, float], times: int = 1) -> None:
        nonlocal dense, attn
        dense += block[0] * times
        attn += block[1] * times

    c = cfg.hidden
    if cfg.use_text:
        add(_block(cfg, length, length), cfg.layers)
        dense += _linear(masked, c, c) + _linear(masked, c, cfg.vocab_size)   # word head
    if cfg.use_image:
        for n in cfg.patches_per_level():
            inputs += _linear(n, cfg.patch_dim, c) + _linear(n, cfg.position_dim, c)
            add(_block(cfg, n, n), cfg.layers)
        n = cfg.patches_per_level()
        dec_i = cfg.decoder_intermediate or cfg.intermediate
        if cfg.multiscale:
            add(_block(cfg, n[2], n[2], dec_i))
            add(_block(cfg, n[1], n[2], dec_i))
            add(_block(cfg, n[0], n[1], dec_i))
        hidden = cfg.pixel_head_hidden or c
        dense += _linear(n[0], c, hidden) + _linear(n[0], hidden, cfg.patch_dim)
    u = cfg.num_patches
    if cfg.fusion == "uwox":
        add(_block(cfg, length, length))
        add(_block(cfg, u, u))
        dense += 2.0 * length * u * c                         # CoMat = E_txt E_img^T (a plain bmm)
        dense += _linear(1, cfg.max_text_len + u, 1)
    elif cfg.fusion == "unit":
        add(_block(cfg, length, u))
        add(_block(cfg, u, length))
    return {"dense": dense, "attention": attn, "input": inputs}


def flops_per_sample(cfg: ModelConfig, text_len: int | None = None, masked_words: float | None = None,
                     attention_backward: float = 2.5) -> float:
    """Forward + backward FLOPs of one full (image, report) sample.

    text_len: report tokens (default max_text_len); masked_words: positions the word head reads
    (default the row budget, model.max_masked_words); attention_backward: backward/forward ratio of the
    attention core (2.5 flash/efficient kernels with recompute, 2.0 math)."""
    f = forward_flops(cfg, text_len, masked_words)
    return 3.0 * f["dense"] + 2.0 * f["input"] + (1.0 + attention_backward) * f["attention"]


def mfu(samples_per_s: float, cfg: ModelConfig, peak_flops: float, **kwargs) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the accelerator's peak (e.g. 989e12 for an
    H100/H200 in dense bf16)."""
    return samples_per_s * flops_per_sample(cfg, **kwargs) / peak_flops
