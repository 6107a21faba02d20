"""`python -m mixvlp_ds <program> [args]`: the programs of mixvlp_ds.programs by name."""

import sys

from mixvlp_ds.programs import dispatch

if __name__ == "__main__":
    sys.exit(dispatch(sys.argv[1:]))
