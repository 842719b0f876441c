"""``python -m iarm_torchrec.experiments``: the same as ``iarm experiment``."""

import sys

from iarm_torchrec.experiments.command import main

if __name__ == "__main__":
    sys.exit(main())
