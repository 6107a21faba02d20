"""The programs: what a user runs. Everything else in the package is a library they are built from.

    python -m mixvlp_ds quickstart [...]      the main job on the embedded synthetic institutions
    python -m mixvlp_ds evaluate --task ...   a fine-tuned or pre-trained model on shards
    python -m mixvlp_ds sweep --config ...    the paper's grids (pre-train, fine-tune, table)
    python -m mixvlp_ds finetune --config ... (also launchers/finetune.py)
    python -m mixvlp_ds pretrain --config ... (also launchers/pretrain.py, under deepspeed/torchrun)
    python -m mixvlp_ds tokenizer train ...   a WordPiece tokenizer from shards
    python -m mixvlp_ds.shard --source ...    shards (its own package: the first step of the pipeline)

Each has a console script as well (`mixvlp-quickstart`, `mixvlp-evaluate`, ...: pyproject.toml), which
calls the functions below: the program's `main()` with an exit status (mixvlp_ds.status).
`mixvlp-pretrain` is `mixvlp_ds.train.pretrain:console`, which adds 3 for checkpoint store failures;
`mixvlp-shard` and `mixvlp-tokenizer` return their own status.
"""

from __future__ import annotations

import sys

from mixvlp_ds.status import run


def finetune(argv: list[str] | None = None) -> int:
    from mixvlp_ds.apps.finetune import main

    return run(main, argv)


def evaluate(argv: list[str] | None = None) -> int:
    from mixvlp_ds.programs.evaluate import main

    return run(main, argv)


def sweep(argv: list[str] | None = None) -> int:
    from mixvlp_ds.programs.sweep import main

    return run(main, argv)


def quickstart(argv: list[str] | None = None) -> int:
    from mixvlp_ds.programs.quickstart import main

    return run(main, argv)


def pretrain(argv: list[str] | None = None) -> int:
    from mixvlp_ds.train.pretrain import cli, exit_now

    exit_now(cli(argv))  # leaves the process (see exit_now)
    return 0


def tokenizer(argv: list[str] | None = None) -> int:
    from mixvlp_ds.text.tokenizer import main

    return run(main, argv)


def shard(argv: list[str] | None = None) -> int:
    from mixvlp_ds.shard.__main__ import main

    return main(argv)


PROGRAMS = {"quickstart": quickstart, "evaluate": evaluate, "sweep": sweep, "finetune": finetune,
            "pretrain": pretrain, "tokenizer": tokenizer, "shard": shard}


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
