"""BERT WordPiece tokenizer: read from a local directory, or built from the training reports.

Nothing is downloaded. A trained tokenizer is saved as a directory that
`transformers.AutoTokenizer.from_pretrained(DIR)` loads with no code of ours.

    python -m mixvlp_ds tokenizer train --shards shards/mimic-like --out runs/tok --vocab-size 8000
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerFast

# The tokenizer's own `model_max_length` (what transformers warns beyond when a call does not
# truncate), written into tokenizer_config.json. Not the report length of a batch: that is the
# model's (model.max_text_len), and every caller passes it to `collate.tokenize`.
MODEL_MAX_LENGTH = 150
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocab(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> list[str]:
    """A WordPiece vocabulary in a canonical order: the special tokens, every character seen (as a
    word start and as a `##` continuation, so any word can be spelled), then whole words by
    descending frequency (ties alphabetical) up to `vocab_size`.

    Why not `tokenizers`' WordPieceTrainer: its result depends on hash-map iteration order (measured:
    a different vocabulary, and so different token ids, in every process for the same reports),
    which breaks reproducible runs. Report vocabularies are small (~10-20 k distinct words in
    MIMIC-CXR), so whole words plus characters cover them well."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        if text:
            counts.update(word for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for word in counts for c in word})
    vocab = SPECIAL_TOKENS + chars + ["##" + c for c in chars]
    words = sorted((w for w, n in counts.items() if n >= min_frequency and len(w) > 1),
                   key=lambda w: (-counts[w], w))
    return vocab + words[:max(0, vocab_size - len(vocab))]


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Build an uncased BERT WordPiece tokenizer from `texts` (deterministic) and save it to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = build_vocab(texts, vocab_size, min_frequency)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=MODEL_MAX_LENGTH, do_lower_case=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer directory (ours, or a local copy of e.g. bert-base-uncased)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"tokenizer directory {path} does not exist (train one with "
                                f"`python -m mixvlp_ds tokenizer train`)")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.model_max_length = MODEL_MAX_LENGTH
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
    p = argparse.ArgumentParser(prog="python -m mixvlp_ds tokenizer", description=__doc__,
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
