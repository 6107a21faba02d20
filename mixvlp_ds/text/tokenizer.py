"""BERT WordPiece tokenizer: read from a local directory, or trained on the training reports.

Nothing is downloaded. A trained tokenizer is saved as a directory that
`transformers.AutoTokenizer.from_pretrained(DIR)` loads with no code of ours.

    python -m mixvlp_ds.text.tokenizer train --shards shards/mimic-like --out runs/tok --vocab-size 8000
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

MAX_LENGTH = 150
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train an uncased BERT WordPiece tokenizer on `texts` and save it to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS)
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=MAX_LENGTH, do_lower_case=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory (ours, or a local copy of e.g. bert-base-uncased)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist (train one with "
                                f"`python -m mixvlp_ds.text.tokenizer train`)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.model_max_length = MAX_LENGTH
    return tok


def iter_shard_texts(shard_dirs: Iterable[str | Path], split: str = "train") -> Iterable[str]:
    """Report texts of one split from local shard folders (WebDataset tars listed in index.json)."""
    import json
    import tarfile

    for d in shard_dirs:
        d = Path(d)
        path = d / "index.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {d} is not a shard folder")
        index = json.loads(path.read_text())
        if index.get("format", "wds") != "wds":
            raise ValueError(f"{path}: format {index.get('format')!r}; tokenizer training reads WebDataset "
                             "shards (write a wds copy, or pass the texts to train_tokenizer)")
        shards = index.get("splits", {}).get(split, {}).get("shards", [])
        if not shards:
            raise ValueError(f"{path}: split {split!r} has no shards")
        for shard in shards:
            with tarfile.open(d / shard["file"]) as tar:
                for member in tar:
                    if member.name.endswith(".txt"):
                        yield tar.extractfile(member).read().decode("utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds.text.tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train a WordPiece tokenizer on the training reports of shards")
    t.add_argument("--shards", nargs="+", required=True, help="shard folders (each with index.json)")
    t.add_argument("--out", required=True, help="output directory")
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--split", default="train")
    args = p.parse_args(argv)
    tok = train_tokenizer(iter_shard_texts(args.shards, args.split), args.out, args.vocab_size)
    print(f"tokenizer with {len(tok)} tokens written to {args.out}")


if __name__ == "__main__":
    main()
