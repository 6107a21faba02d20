"""Saving and loading MixVLP, and exporting its text side as a plain Hugging Face BertModel.

    model.save_pretrained(DIR, tokenizer)      # DIR/model.safetensors, DIR/config.json, DIR/tokenizer/
    model = MixVLP.from_pretrained(DIR)        # (both in mixvlp.py: persistence points one way)
    read_pretraining(DIR)                      # DIR/pretraining.json: the run's P% subset, or None
    export_text_encoder_hf(model, OUT, tokenizer)
    transformers.AutoModel.from_pretrained(OUT)  # no code of ours; last_hidden_state == F_txt

The BertModel export is exact: BERT's embedding is LayerNorm(word + position + token type);
ours is LayerNorm(Norm_w(word) + Norm_p(position)) (embedding_norm=True). Norm_w(word) depends on
the word only, so the exported word table is Norm_w applied to every row (likewise positions),
token types are zero, and BERT's LayerNorm is our final one. For UWOX the fusion block SAM_uwox
is appended as one more BERT layer, so the export gives F_txt, the features applications use.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mixvlp_ds.model.bert_init import BLOCK_NAMES
from mixvlp_ds.model.mixvlp import PRETRAINING, TOKENIZER, MixVLP


def load_saved_tokenizer(directory: str | Path):
    """The tokenizer saved beside a model by save_pretrained."""
    from mixvlp_ds.text.tokenizer import load_tokenizer
    return load_tokenizer(Path(directory) / TOKENIZER)


def read_pretraining(directory: str | Path) -> dict | None:
    """The facts pre-training exported beside the weights (`save_pretrained(pretraining=...)`):
    {"paired_percent": {paired source: P}, "subset_seed": S}, the P% paired subset fine-tuning
    trains on. None for a directory without them (random init, BERT weights, an older export)."""
    path = Path(directory) / PRETRAINING
    if not path.is_file():
        return None
    try:
        facts = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    fits = (isinstance(facts, dict) and isinstance(facts.get("paired_percent"), dict)
            and isinstance(facts.get("subset_seed"), int))
    if not fits:
        raise ValueError(f"{path}: expected paired_percent (a mapping source -> P) and subset_seed "
                         f"(an integer), got {facts!r}")
    return facts


@torch.no_grad()
def export_text_encoder_hf(model: MixVLP, directory: str | Path, tokenizer=None,
                           include_fusion: bool | None = None) -> Path:
    """Write the text side as a Hugging Face BertModel directory (config.json + model.safetensors).

    include_fusion: append SAM_uwox (UWOX) so the output is F_txt; default True for UWOX. UNIT's
    F_txt needs an image, so UNIT exports E_txt (the shared encoder) only."""
    from transformers import BertConfig, BertModel

    cfg = model.cfg
    if not cfg.use_text:
        raise ValueError("this model has no text side to export (use_text=False)")
    if not cfg.embedding_norm:
        raise ValueError("embedding_norm=False (eq. 1 to the letter, no LayerNorm after the sum) cannot be "
                         "expressed by BERT's embedding layer, which normalises the sum; no exact export")
    if include_fusion is None:
        include_fusion = cfg.fusion == "uwox"
    if include_fusion and cfg.fusion != "uwox":
        raise ValueError(f"fusion={cfg.fusion!r}: only UWOX's fusion block works on text alone")
    blocks = list(model.encoder.blocks) + ([model.uwox.block] if include_fusion else [])
    hf_cfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=len(blocks),
                        num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate, hidden_act="gelu",
                        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attention_dropout,
                        max_position_embeddings=cfg.max_text_len, type_vocab_size=1,
                        layer_norm_eps=cfg.layer_norm_eps)
    bert = BertModel(hf_cfg, add_pooling_layer=False).eval()
    emb, te = bert.embeddings, model.text_embed

    def normed(table: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        return torch.nn.functional.layer_norm(table.float(), norm.normalized_shape, norm.weight.float(),
                                              norm.bias.float(), norm.eps)

    emb.word_embeddings.weight.copy_(normed(te.word.weight, te.word_norm))
    emb.position_embeddings.weight.copy_(normed(te.position.weight, te.position_norm))
    emb.token_type_embeddings.weight.zero_()
    emb.LayerNorm.load_state_dict({k: v.float() for k, v in te.norm.state_dict().items()})
    for layer, block in zip(bert.encoder.layer, blocks, strict=True):
        theirs = {}
        for name, value in block.state_dict().items():
            module, kind = name.rsplit(".", 1)
            theirs[f"{BLOCK_NAMES[module]}.{kind}"] = value.float()
        layer.load_state_dict(theirs)
    d = Path(directory)
    bert.save_pretrained(str(d), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(d))
    return d
