"""Compiled kernels that PyTorch has no fast path for; each falls back to plain PyTorch ops."""

import os
from typing import Tuple


def env_backend(variable: str, backends: Tuple[str, ...]) -> str:
    """The backend an environment ``variable`` asks for, ``backends[0]`` when unset or empty;
    anything else is refused naming the variable and the choices.

    Example::

        >>> env_backend("IARM_EXAMPLE_BACKEND_UNSET", ("fast", "plain"))
        'fast'
    """
    value = os.environ.get(variable, backends[0]).strip().lower() or backends[0]
    if value not in backends:
        raise ValueError(f"{variable}={value!r}: use one of {backends}")
    return value
