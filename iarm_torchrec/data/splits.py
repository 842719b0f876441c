"""Train / valid / test splits, decided row by row so a stream needs no shuffle in memory.

* ``random``: a row goes to a split by a seeded splitmix64 hash of its *row index* (its 0-based
  position among the data lines of the source), so the split is reproducible, independent of
  chunking, workers and compression, and the proportions hold up to sampling noise
  (``+-sqrt(p(1-p)/n)``).
* ``time``: rows are ranked by time and cut at the ratios: the first ``1 - valid - test`` of them
  train, the next ``valid`` validate, the last ``test`` test. Criteo's day files (read in day
  order) and Avazu's ``train.csv`` (sorted by ``hour``) are in time order already, so their rank
  is the row index; MovieLens ranks by ``timestamp`` (ties in file order).

The paper's test ratios 0.2 and 0.3 are ``SplitConfig(test_ratio=0.2)`` / ``SplitConfig(test_ratio=0.3)``.
"""

from dataclasses import asdict, dataclass
from typing import Any, Dict

import numpy as np

from iarm_torchrec.data.vocab import mix64

SPLIT_KINDS = ("random", "time")


@dataclass(frozen=True)
class SplitConfig:
    """How rows are assigned to ``train`` / ``valid`` / ``test``.

    Args:
        kind: ``"random"`` (seeded hash of the row index) or ``"time"`` (ordered cut).
        valid_ratio: share of rows in ``valid``.
        test_ratio: share of rows in ``test``; ``train`` gets the rest.
        seed: the random split's seed.

    Example::

        >>> cfg = SplitConfig(test_ratio=0.3, valid_ratio=0.1, seed=7)
        >>> codes = cfg.assign(np.arange(100_000), rank=np.arange(100_000), total=100_000)
        >>> np.bincount(codes).round(-3).tolist()
        [60000, 10000, 30000]
        >>> SplitConfig("time").assign(np.arange(10), rank=np.arange(10), total=10).tolist()
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    """

    kind: str = "random"
    valid_ratio: float = 0.1
    test_ratio: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {SPLIT_KINDS}, got {self.kind!r}")
        for name in ("valid_ratio", "test_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.valid_ratio + self.test_ratio >= 1.0:
            raise ValueError(
                f"valid_ratio + test_ratio must leave rows for training (< 1), got "
                f"{self.valid_ratio} + {self.test_ratio}; lower one of them"
            )

    @property
    def train_ratio(self) -> float:
        return 1.0 - self.valid_ratio - self.test_ratio

    def assign(self, rows: np.ndarray, rank: np.ndarray, total: int) -> np.ndarray:
        """Split codes (``uint8``, 0 train, 1 valid, 2 test: the index in ``SPLITS``) of some rows.

        Args:
            rows: ``int64 [n]`` row indices (what the random split hashes).
            rank: ``int64 [n]`` time ranks in ``[0, total)`` (what the time split cuts).
            total: number of ranked rows in the whole source.
        """
        if self.kind == "random":
            salt = mix64(np.array([self.seed], dtype=np.uint64))[0]
            u = (mix64(rows.astype(np.uint64) ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
            cuts = (self.train_ratio, self.train_ratio + self.valid_ratio)
            return ((u >= cuts[0]).astype(np.uint8) + (u >= cuts[1])).astype(np.uint8)
        n_train = int(round(total * self.train_ratio))
        n_valid = int(round(total * self.valid_ratio))
        return ((rank >= n_train).astype(np.uint8) + (rank >= n_train + n_valid)).astype(np.uint8)

    def to_dict(self) -> Dict[str, Any]:
        return {"split": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}

