"""Console entry points (`mixvlp-finetune`, `mixvlp-evaluate`, `mixvlp-sweep`, `mixvlp-quickstart`):
each program's `main()` with an exit status. 0: done; 2: a configuration or input error, reported
as one `error: ...` line; 1: anything else, with its traceback. (`mixvlp-pretrain` is
`mixvlp_ds.train.pretrain:cli`, which adds 3 for checkpoint store failures; `mixvlp-shard` and
`mixvlp-tokenizer` return their own status.)"""

from __future__ import annotations

import sys
from collections.abc import Callable

from mixvlp_ds.config import ConfigError


def run(main: Callable, argv: list[str] | None = None) -> int:
    try:
        main(argv)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


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
