"""`--init-bert DIR`: initialise the shared encoder and the word embeddings from a local Hugging
Face BERT checkpoint (e.g. a copy of bert-base-uncased), as the paper does. Nothing is downloaded.

    report = load_bert_weights(model, "/data/bert-base-uncased")
    print(report.summary())     # loaded / new / unused / mismatched tensors

Only the encoder, the text embeddings and (when the checkpoint has it) the masked-word head come
from BERT; fusion, decoder, patch embedding and pair head start fresh (they have no BERT
counterpart). BERT's 512 position embeddings are cut to the first `max_text_len`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

# Our block parameter names -> BERT's layer names (weight and bias of each).
BLOCK_NAMES = {
    "attn.query": "attention.self.query",
    "attn.key": "attention.self.key",
    "attn.value": "attention.self.value",
    "attn.out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ffn_norm": "output.LayerNorm",
}


@dataclass
class InitReport:
    source: str
    loaded: list[str] = field(default_factory=list)        # our parameter names set from BERT
    new: list[str] = field(default_factory=list)           # our parameters left at their init
    unused: list[str] = field(default_factory=list)        # checkpoint tensors not used
    mismatched: list[str] = field(default_factory=list)    # "name: ours (..) vs bert (..)"

    def summary(self) -> str:
        lines = [f"BERT init from {self.source}: {len(self.loaded)} tensors loaded, {len(self.new)} new, "
                 f"{len(self.unused)} unused, {len(self.mismatched)} shape mismatches"]
        lines += [f"  mismatched: {m}" for m in self.mismatched]
        lines += [f"  unused: {u}" for u in self.unused]
        return "\n".join(lines)


def read_checkpoint(directory: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a HF checkpoint directory (model.safetensors or pytorch_model.bin),
    names without the 'bert.' prefix and with old gamma/beta names made weight/bias."""
    d = Path(directory)
    if (d / "model.safetensors").is_file():
        from safetensors.torch import load_file
        raw = load_file(str(d / "model.safetensors"))
    elif (d / "pytorch_model.bin").is_file():
        raw = torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{d}: no model.safetensors or pytorch_model.bin (a local Hugging Face "
                                "BERT checkpoint directory is expected)")
    out = {}
    for k, v in raw.items():
        k = k.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight")
        out[k.replace("LayerNorm.beta", "LayerNorm.bias")] = v
    return out


def bert_name_map(model) -> dict[str, str]:
    """Our parameter name -> BERT checkpoint name, for every parameter BERT can provide."""
    cfg = model.cfg
    names = {}
    for i in range(cfg.layers):
        for ours, theirs in BLOCK_NAMES.items():
            for p in ("weight", "bias"):
                names[f"encoder.blocks.{i}.{ours}.{p}"] = f"encoder.layer.{i}.{theirs}.{p}"
    if cfg.use_text:
        names["text_embed.word.weight"] = "embeddings.word_embeddings.weight"
        names["text_embed.position.weight"] = "embeddings.position_embeddings.weight"
        if cfg.embedding_norm:
            names["text_embed.norm.weight"] = "embeddings.LayerNorm.weight"
            names["text_embed.norm.bias"] = "embeddings.LayerNorm.bias"
        names.update({
            "word_head.dense.weight": "cls.predictions.transform.dense.weight",
            "word_head.dense.bias": "cls.predictions.transform.dense.bias",
            "word_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
            "word_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
            "word_head.decoder.weight": "cls.predictions.decoder.weight",
            "word_head.decoder.bias": "cls.predictions.bias",
        })
    return names


@torch.no_grad()
def load_bert_weights(model, directory: str | Path) -> InitReport:
    """Copy a local BERT checkpoint's tensors into `model` (a MixVLP). Returns the report."""
    ckpt = read_checkpoint(directory)
    if "cls.predictions.decoder.weight" not in ckpt and "cls.predictions.bias" in ckpt:
        # tied to the word embeddings in BertForMaskedLM; safetensors stores the tensor once
        ckpt["cls.predictions.decoder.weight"] = ckpt["embeddings.word_embeddings.weight"]
    report = InitReport(source=str(directory))
    params = dict(model.named_parameters())
    used = set()
    for ours, theirs in bert_name_map(model).items():
        if theirs not in ckpt:
            continue
        src = ckpt[theirs]
        if theirs == "embeddings.position_embeddings.weight":
            src = src[: params[ours].shape[0]]
        used.add(theirs)
        if src.shape != params[ours].shape:
            report.mismatched.append(f"{ours}: ours {tuple(params[ours].shape)} vs bert {tuple(src.shape)} "
                                     f"({theirs})")
            continue
        params[ours].copy_(src.to(params[ours].dtype))
        report.loaded.append(ours)
    report.new = [n for n in params if n not in set(report.loaded)]
    report.unused = sorted(k for k in ckpt if k not in used)
    return report
