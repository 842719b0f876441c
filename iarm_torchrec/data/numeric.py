"""Numerical fields: statistics from the train split and the transforms that use them.

Transforms (``numeric=`` of preprocessing), applied per field; a missing value always becomes 0:

* ``log1p``: ``log(1 + max(x, 0))``. Negative values are clamped to 0 (in Kaggle Criteo only
  ``I2`` goes below 0, down to -3), so a missing or negative count reads as "none".
* ``standard``: ``(x - mean) / std`` with the train split's mean and (population) std.
* ``minmax``: ``(x - min) / (max - min)`` with the train split's min and max.
* ``none``: ``x`` as it is.
* ``bucketize``: the field becomes **categorical**: ``floor(ln(x)^2)`` for ``x > 2`` and
  ``floor(x)`` below (the second-place rule of the Kaggle Criteo challenge, which lets the
  model learn a free vector per magnitude instead of one vector scaled by ``x``), as ids
  ``1..BUCKETS-1`` (:func:`bucketize`; 0 is missing). Its vocabulary is the fixed range, so
  it needs no statistics.

A constant field (``std == 0`` or ``max == min``, e.g. the all-zero MovieLens timestamps of the
shared copy) becomes 0 everywhere instead of dividing by zero.
"""

from dataclasses import asdict, dataclass
from typing import Dict

import numpy as np

TRANSFORMS = ("log1p", "standard", "minmax", "none", "bucketize")

_LOWEST = -10  # floor(x) below this shares one bucket (Criteo's counts start at -3)
_HIGHEST = 1000  # floor(ln(x)^2) above this shares one bucket (x > e^31.6)
BUCKETS = 1 + (2 - _LOWEST + 1) + (_HIGHEST + 1)
"""Ids of a bucketized field: 0 (missing), then ``floor(x)`` for ``_LOWEST <= x <= 2``, then
``floor(ln(x)^2)`` for ``x > 2``."""


def bucketize(values: np.ndarray) -> np.ndarray:
    """Raw values (NaN = missing) -> ``int32`` bucket ids in ``[0, BUCKETS)``, 0 for missing.

    >>> bucketize(np.array([np.nan, -3.0, 0.0, 2.0, 3.0, 100.0, 1e6])).tolist()
    [0, 8, 11, 13, 15, 35, 204]
    """
    missing = np.isnan(values)
    x = np.where(missing, 0.0, values)
    low = np.clip(np.floor(x), _LOWEST, 2) - _LOWEST + 1  # 1 .. 13
    with np.errstate(divide="ignore", invalid="ignore"):
        high = np.clip(np.floor(np.log(np.maximum(x, 1.0)) ** 2), 0, _HIGHEST) + (2 - _LOWEST + 2)
    ids = np.where(x > 2, high, low)
    ids[missing] = 0
    return ids.astype(np.int32)


@dataclass
class NumericStats:
    """Count, mean, sum of squared deviations, min and max of one field; mergeable (Chan et al.).

    >>> a, b = NumericStats.of(np.array([1.0, 2.0])), NumericStats.of(np.array([3.0, np.nan]))
    >>> a.merge(b); a.count, a.mean, round(a.std, 4), a.min, a.max
    (3, 2.0, 0.8165, 1.0, 3.0)
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")

    @classmethod
    def of(cls, values: np.ndarray) -> "NumericStats":
        """Statistics of the present (non-NaN) values."""
        x = values[~np.isnan(values)]
        if not len(x):
            return cls()
        mean = float(x.mean())
        return cls(len(x), mean, float(((x - mean) ** 2).sum()), float(x.min()), float(x.max()))

    def merge(self, other: "NumericStats") -> None:
        if not other.count:
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.m2 += other.m2 + delta * delta * self.count * other.count / n
        self.mean += delta * other.count / n
        self.count = n
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0

    def to_dict(self) -> Dict[str, float]:
        return {**asdict(self), "std": self.std}

    @classmethod
    def from_dict(cls, d: Dict[str, float]) -> "NumericStats":
        return cls(int(d["count"]), d["mean"], d["m2"], d["min"], d["max"])


def transform(values: np.ndarray, how: str, stats: NumericStats) -> np.ndarray:
    """Raw values (``float64``, NaN = missing) -> ``float32`` model inputs (see the module docstring).

    >>> transform(np.array([np.nan, -3.0, 0.0, np.e - 1]), "log1p", NumericStats()).tolist()
    [0.0, 0.0, 0.0, 1.0]
    >>> transform(np.array([5.0, 5.0]), "standard", NumericStats.of(np.array([5.0, 5.0]))).tolist()
    [0.0, 0.0]
    """
    if how not in TRANSFORMS or how == "bucketize":
        raise ValueError(f"numeric transform must be one of {TRANSFORMS[:-1]} (bucketize makes ids: bucketize()), got {how!r}")
    missing = np.isnan(values)
    x = np.where(missing, 0.0, values)
    if how == "log1p":
        x = np.log1p(np.maximum(x, 0.0))
    elif how == "standard":
        x = (x - stats.mean) / stats.std if stats.std > 0 else np.zeros_like(x)
    elif how == "minmax":
        span = stats.max - stats.min
        x = (x - stats.min) / span if span > 0 else np.zeros_like(x)
    x[missing] = 0.0
    return x.astype(np.float32)
