"""A program's main() as an exit status: 0 done; 2 a configuration or input error, reported as
one `error: ...` line; 1 anything else, with its traceback. Used by every program's
`if __name__ == "__main__"` and by the console scripts (mixvlp_ds.programs)."""

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
