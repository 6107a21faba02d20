"""The programs: what a user runs. Everything else in the package is a library they are built from.

    python -m mixvlp_ds quickstart [...]      the main job on the embedded synthetic institutions
    python -m mixvlp_ds evaluate --task ...   a fine-tuned or pre-trained model on shards
    python -m mixvlp_ds sweep --config ...    the paper's grids (pre-train, fine-tune, table)
    python -m mixvlp_ds finetune --config ... (also launchers/finetune.py)
    python -m mixvlp_ds pretrain --config ... (also launchers/pretrain.py, under deepspeed/torchrun)
    python -m mixvlp_ds tokenizer train ...   a WordPiece tokenizer from shards
    python -m mixvlp_ds.shard --source ...    shards (its own package: the first step of the pipeline)

Each has a console script as well (`mixvlp-quickstart`, `mixvlp-evaluate`, ...: pyproject.toml), which
calls `programs/console.py`: the program's `main()` with an exit status (mixvlp_ds.status).
`mixvlp-pretrain` is `mixvlp_ds.train.pretrain:console`, which adds 3 for checkpoint store failures;
`mixvlp-shard` and `mixvlp-tokenizer` return their own status.
"""

from __future__ import annotations

import sys

from mixvlp_ds.programs import console

PROGRAMS = {"quickstart": console.quickstart, "evaluate": console.evaluate, "sweep": console.sweep,
            "finetune": console.finetune, "pretrain": console.pretrain, "tokenizer": console.tokenizer,
            "shard": console.shard}


def dispatch(argv: list[str]) -> int:
    """`python -m mixvlp_ds <program> [args]`: the program's exit status; 2 without a known program."""
    if argv and argv[0] in PROGRAMS:
        return PROGRAMS[argv[0]](argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    print(__doc__.strip(), file=sys.stderr)
    print(f"error: {'no program ' + repr(argv[0]) if argv else 'name a program'}; one of: "
          f"{', '.join(PROGRAMS)}", file=sys.stderr)
    return 2
