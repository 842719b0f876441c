"""Categorical values as 64-bit keys, their counts, and the vocabularies that turn keys into ids.

Every raw categorical value (a token such as ``b"68fd1e64"`` or ``b"Comedy"``) becomes a
``uint64`` *key* before anything is counted, so counting and lookups are numpy array work, never
Python dicts of strings:

* a token of at most 8 bytes is its own key: its bytes, zero-padded, read as a little-endian
  ``uint64`` (exact, no collisions; every Criteo and Avazu value is such a token);
* a longer token is hashed: splitmix64 over its 8-byte words (stable across runs and machines,
  unlike Python's salted ``hash``; two distinct long tokens share a key with probability ~2^-64);
* the empty token (a missing value) is key 0, and no present value has key 0.

Id 0 of every field is reserved for *missing or out-of-vocabulary*: a vocabulary maps the keys it
kept to ``1..len(keys)`` (in key order) and everything else to 0; hashing maps a present key to
``1 + splitmix64(key) % buckets``.
"""

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

from iarm_torchrec.files import PathLike, atomic_path

OOV_ID = 0  # the id of missing and out-of-vocabulary values, in every field
KEY_SCHEME = "u64le8-splitmix64"  # recorded in spec.options; bump if token_keys() ever changes

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on a ``uint64`` array (a stable, well-mixed hash).

    >>> mix64(np.array([0, 1], dtype=np.uint64)).tolist()
    [0, 6238072747940578789]
    """
    x = np.asarray(x, dtype=np.uint64)
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def token_keys(tokens: np.ndarray) -> np.ndarray:
    """``bytes`` tokens (a numpy ``S`` array of any shape) -> ``uint64`` keys of the same shape.

    >>> token_keys(np.array([b"", b"a", b"Comedy"])).tolist()
    [0, 97, 133472105361219]
    >>> bool(token_keys(np.array([b"98107-4317"]))[0] == token_keys(np.array([b"98107-4317", b"toolongtoken"]))[0])
    True
    """
    tokens = np.asarray(tokens)
    if tokens.dtype == object:  # bytes objects (a chunk with long fields): each key as in an "S" array
        return _object_keys(tokens)
    if tokens.dtype.kind != "S":
        raise TypeError(f"token_keys needs a bytes ('S') array, got dtype {tokens.dtype}")
    width = max(8, -(-tokens.dtype.itemsize // 8) * 8)
    words = np.ascontiguousarray(tokens, dtype=f"S{width}").view("<u8").reshape(*tokens.shape, width // 8)
    keys = words[..., 0].astype(np.uint64)
    if width > 8:
        long = (words[..., 1:] != 0).any(axis=-1)
        if long.any():
            h = np.full(long.sum(), _GOLDEN, dtype=np.uint64)
            for j, w in enumerate(np.moveaxis(words[long], -1, 0)):
                w = w.astype(np.uint64)
                # only non-zero words: zero words are padding, so a token's key does not depend on the array width
                h = np.where(w != 0, mix64(h ^ w ^ np.uint64(j)), h)
            keys[long] = np.where(h == 0, np.uint64(1), h)
    return keys


def _object_keys(tokens: np.ndarray) -> np.ndarray:
    flat = tokens.reshape(-1)
    sizes = np.fromiter(map(len, flat), dtype=np.int64, count=len(flat))
    short = sizes <= 64
    keys = np.zeros(len(flat), dtype=np.uint64)
    if short.any():
        keys[short] = token_keys(np.array(list(flat[short]), dtype=f"S{max(int(sizes[short].max()), 1)}"))
    for i in np.flatnonzero(~short):  # few: each one costs its own size only
        keys[i] = token_keys(np.array([flat[i]]))[0]
    return keys.reshape(tokens.shape)


def count_keys(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct non-zero keys (sorted) and how often each occurs; key 0 (missing) is not counted."""
    keys = keys[keys != 0]
    uniq, counts = np.unique(keys, return_counts=True)
    return uniq, counts.astype(np.int64)


@dataclass
class KeyCounter:
    """Counts of one field's keys, merged from many chunks in ``O(distinct keys)`` memory.

    Memory is 16 bytes per distinct key (key + count) plus the pending chunk tables; pending
    tables are merged once they outweigh the merged one, so the total merge work stays
    ``O(N log N)``.

    >>> c = KeyCounter()
    >>> c.add(*count_keys(np.array([5, 7, 5, 0], dtype=np.uint64)))
    >>> c.add(*count_keys(np.array([7, 9], dtype=np.uint64)))
    >>> [a.tolist() for a in c.result()]
    [[5, 7, 9], [2, 2, 1]]
    """

    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    _pending: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _pending_size: int = 0

    def add(self, keys: np.ndarray, counts: np.ndarray) -> None:
        self._pending.append((keys, counts))
        self._pending_size += len(keys)
        if self._pending_size > max(len(self.keys), 1 << 20):
            self._merge()

    def _merge(self) -> None:
        keys = np.concatenate([self.keys] + [k for k, _ in self._pending])
        counts = np.concatenate([self.counts] + [c for _, c in self._pending])
        self._pending, self._pending_size = [], 0
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) if len(keys) else np.zeros(0, int)
        self.keys, self.counts = keys[starts], np.add.reduceat(counts, starts) if len(keys) else counts

    def result(self) -> Tuple[np.ndarray, np.ndarray]:
        """Sorted distinct keys and their total counts."""
        if self._pending:
            self._merge()
        return self.keys, self.counts


class Vocabulary:
    """A field's kept keys (sorted ``uint64``): key ``keys[i]`` -> id ``i + 1``, anything else -> 0.

    >>> v = Vocabulary(np.array([97, 98], dtype=np.uint64))
    >>> v.ids(np.array([98, 0, 99, 97], dtype=np.uint64)).tolist(), v.size
    ([2, 0, 0, 1], 3)
    """

    def __init__(self, keys: np.ndarray) -> None:
        self.keys = keys

    @classmethod
    def from_counts(cls, keys: np.ndarray, counts: np.ndarray, min_count: int) -> "Vocabulary":
        """Keep the keys seen at least ``min_count`` times (``keys`` sorted, as :class:`KeyCounter` gives)."""
        return cls(np.ascontiguousarray(keys[counts >= min_count]))

    @property
    def size(self) -> int:
        return len(self.keys) + 1

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """``uint64`` keys (any shape) -> ``int32`` ids, 0 for missing and unseen keys."""
        if len(self.keys) == 0:
            return np.zeros(keys.shape, np.int32)
        pos = np.searchsorted(self.keys, keys)
        found = self.keys[np.minimum(pos, len(self.keys) - 1)] == keys
        return np.where(found & (keys != 0), pos + 1, OOV_ID).astype(np.int32)

    def save(self, path: PathLike) -> None:
        """Write the keys to ``path`` (``.npy``) atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save adds no ``.npy``
            np.save(handle, self.keys)

    @classmethod
    def load(cls, path: PathLike) -> "Vocabulary":
        return cls(np.load(path, mmap_mode="r"))


class HashedVocabulary:
    """Per-field hashing into ``buckets`` ids: key -> ``1 + splitmix64(key) % buckets``, missing -> 0.

    >>> HashedVocabulary(10).ids(np.array([0, 97], dtype=np.uint64)).tolist(), HashedVocabulary(10).size
    ([0, 4], 11)
    """

    def __init__(self, buckets: int) -> None:
        if buckets < 1:
            raise ValueError(f"hash_buckets must be >= 1, got {buckets}")
        self.buckets = buckets

    @property
    def size(self) -> int:
        return self.buckets + 1

    def ids(self, keys: np.ndarray) -> np.ndarray:
        ids = mix64(keys) % np.uint64(self.buckets) + np.uint64(1)
        return np.where(keys != 0, ids, OOV_ID).astype(np.int32)
