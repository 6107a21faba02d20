"""BERT initialisation, save/from_pretrained, and the plain Hugging Face text-encoder export."""

import pytest
import torch
from transformers import AutoModel, BertConfig, BertForMaskedLM

from mixvlp_ds.model import MixVLP, ModelConfig
from mixvlp_ds.model.bert_init import load_bert_weights
from mixvlp_ds.model.export import export_text_encoder_hf


def _tiny_bert(tmp_path, cfg, layers=None):
    torch.manual_seed(7)
    bert_cfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden,
                          num_hidden_layers=layers or cfg.layers,
                          num_attention_heads=cfg.heads, intermediate_size=cfg.intermediate,
                          max_position_embeddings=512)
    bert = BertForMaskedLM(bert_cfg)
    bert.save_pretrained(tmp_path / "bert")
    return bert


def test_bert_init_round_trips(tmp_path, batch_factory):
    cfg = ModelConfig.preset("tiny")
    bert = _tiny_bert(tmp_path, cfg)
    model = MixVLP(cfg)
    report = load_bert_weights(model, tmp_path / "bert")
    sd = bert.state_dict()
    q = model.encoder.blocks[1].attn.query.weight
    assert torch.equal(q, sd["bert.encoder.layer.1.attention.self.query.weight"])
    ln = sd["bert.encoder.layer.0.output.LayerNorm.bias"]
    assert torch.equal(model.encoder.blocks[0].ffn_norm.bias, ln)
    assert torch.equal(model.text_embed.word.weight, sd["bert.embeddings.word_embeddings.weight"])
    pos = sd["bert.embeddings.position_embeddings.weight"]
    assert torch.equal(model.text_embed.position.weight, pos[:150])
    assert torch.equal(model.word_head.dense.weight, sd["cls.predictions.transform.dense.weight"])
    assert "encoder.blocks.1.attn.query.weight" in report.loaded
    assert "patch_embed.pixels.weight" in report.new and "uwox.block.attn.query.weight" in report.new
    assert "embeddings.token_type_embeddings.weight" in report.unused
    assert not report.mismatched and "loaded" in report.summary()
    # the encoder now computes what BERT's layers compute
    x = torch.randn(2, 5, cfg.hidden)
    model.eval()
    bert.eval()
    with torch.no_grad():
        ours = model.encoder(x)
        theirs = x
        for layer in bert.bert.encoder.layer:
            theirs = layer(theirs)[0]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bert_init_reports_mismatch(tmp_path):
    cfg = ModelConfig.preset("tiny")
    _tiny_bert(tmp_path, ModelConfig.preset("tiny", vocab_size=600), layers=3)
    report = load_bert_weights(MixVLP(cfg), tmp_path / "bert")
    assert any(m.startswith("text_embed.word.weight") for m in report.mismatched)
    assert "encoder.layer.2.attention.self.query.weight" in report.unused     # BERT has one layer more
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_bert_weights(MixVLP(cfg), tmp_path)


@pytest.mark.parametrize("arch", ["uwox", "aiayn-text"])
def test_exported_text_encoder_loads_with_automodel(tmp_path, batch_factory, arch):
    cfg = ModelConfig.preset("tiny", arch=arch)
    torch.manual_seed(0)
    model = MixVLP(cfg).eval()
    for p in model.parameters():          # move LayerNorms off 1/0 so the export is really tested
        p.data.add_(0.05 * torch.randn_like(p))
    export_text_encoder_hf(model, tmp_path / "hf")
    hf = AutoModel.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert type(hf).__name__ == "BertModel"
    batch = batch_factory(cfg, 3, mask_text=False)
    with torch.no_grad():
        ours = model.encode_text(batch["input_ids"], batch["attention_mask"])
        theirs = hf(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    real = batch["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-4), (ours[real] - theirs[real]).abs().max()


def test_export_refuses_what_bert_cannot_express():
    with pytest.raises(ValueError, match="embedding_norm"):
        export_text_encoder_hf(MixVLP(ModelConfig.preset("tiny", embedding_norm=False)), "/nonexistent")
    with pytest.raises(ValueError, match="no text"):
        export_text_encoder_hf(MixVLP(ModelConfig.preset("tiny", arch="aiayn-image")), "/nonexistent")


def test_save_and_from_pretrained_round_trip(tmp_path, batch_factory):
    from mixvlp_ds.text.tokenizer import train_tokenizer

    cfg = ModelConfig.preset("tiny", arch="unit", hidden=48, heads=3)
    torch.manual_seed(0)
    model = MixVLP(cfg).eval()
    tok = train_tokenizer(["no acute cardiopulmonary process", "small left pleural effusion"] * 5,
                          tmp_path / "tok", vocab_size=60, min_frequency=1)
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    again = MixVLP.from_pretrained(tmp_path / "m").eval()
    assert again.cfg == cfg
    batch = batch_factory(cfg, 2)
    assert torch.equal(model(batch)["loss"], again(batch)["loss"])
    assert (tmp_path / "m" / "tokenizer" / "tokenizer.json").is_file()
    with pytest.raises(FileNotFoundError, match="not a MixVLP directory"):
        MixVLP.from_pretrained(tmp_path / "tok")
