"""The WordPiece tokenizer: training, saving, offline loading by AutoTokenizer, the shard CLI."""

import io
import json
import tarfile

import pytest
from transformers import AutoTokenizer

from mixvlp_ds.text.tokenizer import MODEL_MAX_LENGTH, load_tokenizer, main, train_tokenizer

REPORTS = [
    "The heart size is normal. No focal consolidation, pleural effusion or pneumothorax.",
    "Small left pleural effusion with adjacent atelectasis. Cardiomegaly is stable.",
    "No acute cardiopulmonary process. Lungs are clear.",
    "Moderate pulmonary edema. Endotracheal tube terminates 4 cm above the carina.",
] * 20


def test_train_save_and_load_offline(tmp_path):
    tok = train_tokenizer(REPORTS, tmp_path / "tok", vocab_size=200, min_frequency=1)
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)   # no code of ours
    text = "Small left pleural effusion. NO PNEUMOTHORAX."
    assert auto(text)["input_ids"] == tok(text)["input_ids"]
    ids = auto(text)["input_ids"]
    assert ids[0] == auto.cls_token_id and ids[-1] == auto.sep_token_id
    assert auto.decode(ids, skip_special_tokens=True) == "small left pleural effusion. no pneumothorax."
    assert {auto.pad_token_id, auto.mask_token_id, auto.unk_token_id} <= set(range(5))
    assert len(auto) <= 200


def test_max_length_150(tmp_path):
    train_tokenizer(REPORTS, tmp_path / "tok", vocab_size=200, min_frequency=1)
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.model_max_length == MODEL_MAX_LENGTH == 150
    enc = tok(" ".join(REPORTS), truncation=True, padding="max_length")
    assert len(enc["input_ids"]) == 150 and enc["input_ids"][-1] == tok.sep_token_id
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")


def _write_shard(folder, texts):
    folder.mkdir()
    with tarfile.open(folder / "train-000000.tar", "w") as tar:
        for i, t in enumerate(texts):
            data = t.encode()
            info = tarfile.TarInfo(f"s{i:04d}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            meta = b'{"split": "train"}'
            info = tarfile.TarInfo(f"s{i:04d}.meta.json")
            info.size = len(meta)
            tar.addfile(info, io.BytesIO(meta))
    index = {"format": "wds", "splits": {"train": {"shards": [{"file": "train-000000.tar"}]}}}
    (folder / "index.json").write_text(json.dumps(index))


def test_cli_trains_on_shards(tmp_path, capsys):
    _write_shard(tmp_path / "shards", REPORTS)
    main(["train", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "tok"),
          "--vocab-size", "150"])
    assert "written to" in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "tok")
    assert "pleural" in tok.get_vocab() and len(tok) <= 150
    with pytest.raises(ValueError, match="no shards"):
        main(["train", "--shards", str(tmp_path / "shards"), "--out", str(tmp_path / "t2"), "--split", "val"])


def test_training_is_deterministic(tmp_path):
    """The same reports give the same vocabulary and ids (tokenizers' trainer did not: hash order)."""
    texts = REPORTS + ["Possible right lower lobe pneumonia; cannot exclude small effusion."] * 3
    for name in ("a", "b"):
        train_tokenizer(texts, tmp_path / name, vocab_size=80, min_frequency=1)
    a, b = ((tmp_path / name / "tokenizer.json").read_bytes() for name in ("a", "b"))
    assert a == b
    vocab = json.loads((tmp_path / "a" / "tokenizer.json").read_text())["model"]["vocab"]
    assert len(vocab) == 80 and vocab["[PAD]"] == 0
    # every character is there as a word start and a continuation, so any word can be spelled
    tok = load_tokenizer(tmp_path / "a")
    assert tok.unk_token not in tok.tokenize("pneumothoraces")
