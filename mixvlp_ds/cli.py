"""Console entry points (`mixvlp-finetune`, `mixvlp-evaluate`, `mixvlp-sweep`, `mixvlp-quickstart`):
each program's `main()` with an exit status (mixvlp_ds.status). `mixvlp-pretrain` is
`mixvlp_ds.train.pretrain:console`, which adds 3 for checkpoint store failures; `mixvlp-shard` and
`mixvlp-tokenizer` return their own status."""

from __future__ import annotations

from mixvlp_ds.status import run


def finetune() -> int:
    from mixvlp_ds.apps.finetune import main

    return run(main)


def evaluate() -> int:
    from mixvlp_ds.evaluate import main

    return run(main)


def sweep() -> int:
    from mixvlp_ds.sweep import main

    return run(main)


def quickstart() -> int:
    from mixvlp_ds.quickstart import main

    return run(main)
