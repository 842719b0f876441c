"""glibc's allocator set to keep freed memory for reuse, which training's large tensors need.

A training step at batch 1024 and ``d' = 32`` allocates and frees tens of tensors of 10-60 MB
(the ``B x M x 3Hd'`` projections, their gradients). glibc serves each of those above its
mmap threshold (at most 32 MB, 128 KB until it has adapted) with a fresh ``mmap`` and returns
it to the kernel on free, and it trims the heap's free top back to the kernel as well; either
way the next step's tensor is fresh memory whose every 4 KB page faults on first touch (about
10,000 faults a step of the 3 interacting layers). :func:`reuse_freed_memory` turns both off
(``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD`` = 2 GB), so freed blocks are reused: no faults after
the first step, a 3-layer forward + backward 1.14x faster at batch 1024 and 1.27x at 2048 on
one thread (``docs/performance.md``). The price: the process keeps its peak heap until it
exits, which a training or scoring job does anyway.

Freed blocks are reused only while nothing small and long-lived lands in them: a 4 KB tensor
kept per batch (a batch's scores) sits in a freed 10 MB block, and the next batch's 10 MB
no longer fits there, so the heap grew by about a batch's activations per batch (9 GB over a
million scored rows). Code that keeps results batch by batch keeps them in a
:class:`ResultBuffer` instead.

It is a process setting, applied by the CLI for the commands that train or score; it does
nothing where the C library is not glibc, or where the user set glibc's own allocator
variables (``MALLOC_*`` or ``GLIBC_TUNABLES``), or with ``IARM_MALLOC=default``.

Example::

    >>> reuse_freed_memory() in (True, False)
    True
"""

import ctypes
import ctypes.util
import logging
import os
import sys

import torch

logger: logging.Logger = logging.getLogger(__name__)

ENV = "IARM_MALLOC"
# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
TRIM_THRESHOLD_BYTES = 2**31 - 1  # an int; a free top above 2 GB is still given back


def reuse_freed_memory() -> bool:
    """Ask glibc to reuse freed memory instead of unmapping and trimming it; True when applied."""
    if os.environ.get(ENV, "").strip().lower() == "default":
        return False
    if os.environ.get("GLIBC_TUNABLES") or any(k.startswith("MALLOC_") for k in os.environ):
        return False  # the user's own settings win
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    logger.debug("glibc malloc: reuse freed memory (no mmap, no trim): %s", applied)
    return applied


class ResultBuffer:
    """Per-batch results (any shape, kept flat) gathered in one float32 buffer that doubles when
    full, instead of a list of small tensors (see the module docstring for why).

    Example::

        >>> buffer = ResultBuffer(capacity=2)
        >>> buffer.extend(torch.tensor([1.0, 2.0])); buffer.extend(torch.tensor([3.0]))
        >>> buffer.values()
        tensor([1., 2., 3.])
    """

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._data: torch.Tensor = torch.empty(max(1, capacity))
        self._size: int = 0

    def extend(self, values: torch.Tensor) -> None:
        """Append ``values`` (flattened, converted to float32 on the CPU)."""
        flat = values.detach().reshape(-1)
        end = self._size + flat.numel()
        if end > self._data.numel():
            grown = torch.empty(max(end, 2 * self._data.numel()))
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = flat
        self._size = end

    def values(self) -> torch.Tensor:
        """The ``N`` values appended so far, in order (a view of the buffer)."""
        return self._data[: self._size]
