"""``python -m iarm_torchrec.train``: the same as ``iarm train``."""

import sys

from iarm_torchrec.train.trainer import main

if __name__ == "__main__":
    sys.exit(main())
