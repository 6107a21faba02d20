"""`python -m mixvlp_ds.tokenizer train --shards ... --out DIR`: the name the docs use for the
tokenizer command; the code lives in `mixvlp_ds.text.tokenizer`."""

from mixvlp_ds.text.tokenizer import load_tokenizer, main, train_tokenizer

__all__ = ["load_tokenizer", "main", "train_tokenizer"]

if __name__ == "__main__":
    main()
