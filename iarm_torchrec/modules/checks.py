"""Argument checks shared by the arches, each raising ``ValueError`` that names the setting.

Every rule about a model's settings is checked once, by the module that owns the setting, when
it is built (as TorchRec's modules do); configs validate by building the model on ``meta``.

Example::

    >>> check_layer_sizes("deep_layer_sizes", [400, 0])
    Traceback (most recent call last):
    ...
    ValueError: deep_layer_sizes must be one or more positive layer sizes, got [400, 0]
"""

from typing import Sequence


def check_positive(**sizes: int) -> None:
    """Raise unless every given size is a positive integer."""
    for name, value in sizes.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def check_non_negative(**counts: int) -> None:
    """Raise unless every given count is ``>= 0``."""
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_layer_sizes(name: str, sizes: Sequence[int]) -> None:
    """Raise unless ``sizes`` is one or more positive layer sizes."""
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"{name} must be one or more positive layer sizes, got {list(sizes)}")
