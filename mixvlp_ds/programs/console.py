"""The console scripts (`mixvlp-quickstart`, `mixvlp-evaluate`, ...: pyproject.toml) and the programs of
`python -m mixvlp_ds <program>`: each program's `main()` with an exit status (mixvlp_ds.status)."""

from __future__ import annotations

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
