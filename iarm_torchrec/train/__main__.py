"""``python -m iarm_torchrec.train [flags]``: the same as ``iarm train [flags]`` (what torchrun and
the TorchX components launch on every rank)."""

import sys

from iarm_torchrec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
