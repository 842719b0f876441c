"""Fixed-size batches cut from a stream of in-memory parts, as the loader cuts them from disk.

``iarm predict`` encodes its input chunk by chunk (:func:`~iarm_torchrec.data.preprocess.encode_chunks`)
and scores each chunk while the next one is encoded, instead of writing the whole file to disk
first. :func:`stream_batches` yields exactly the batches that
:class:`~iarm_torchrec.data.loader.ShardedBatchLoader` (``drop_last=False``, one rank, no
shuffling) yields for the same rows written as parts: rows in order, batch ``k`` holding rows
``kB .. kB + B - 1`` wherever the chunks end (a batch may span two chunks), the last batch padded
with copies of its first row labelled :data:`~iarm_torchrec.data.loader.PADDING_LABEL`. The same
rows in the same batches give the same scores, bit for bit.

Example::

    >>> labels, dense = np.zeros(3, np.float32), np.zeros((3, 0), np.float32)
    >>> parts = [Part(labels[:2], dense[:2], np.array([[1], [2]], np.int32), {}),
    ...          Part(labels[2:], dense[2:], np.array([[3]], np.int32), {})]
    >>> [(b.sparse_features.values().tolist(), b.labels.tolist()) for b in stream_batches(parts, ["id"], {"id": 0}, 2)]
    [([1, 2], [0.0, 0.0]), ([3, 3], [0.0, -1.0])]
"""

from typing import Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch

from iarm_torchrec.data.loader import PADDING_LABEL, sparse_features
from iarm_torchrec.data.parts import Part


def stream_batches(
    parts: Iterable[Part], keys: Sequence[str], one_hot_column: Mapping[str, int], batch_size: int
) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows of ``parts``' rows in order (see the module docstring);
    ``keys`` and ``one_hot_column`` as for :func:`~iarm_torchrec.data.loader.sparse_features`.
    Each batch holds ``dense_features`` float32 ``B x N``, ``sparse_features`` a
    ``KeyedJaggedTensor`` and ``labels`` float32 ``B``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    ones = np.ones(batch_size, dtype=np.int32)
    pending: Optional[Part] = None  # rows not batched yet: fewer than B after each part
    for part in parts:
        pending = part if pending is None or not len(pending.labels) else _concatenate(pending, part)
        full = len(pending.labels) // batch_size * batch_size
        for start in range(0, full, batch_size):
            yield _batch(pending, np.arange(start, start + batch_size), batch_size, keys, one_hot_column, ones)
        pending = _take(pending, np.arange(full, len(pending.labels)))
    if pending is not None and len(pending.labels):
        index = np.zeros(batch_size, dtype=np.int64)  # padding rows copy the batch's first row, as the loader's
        index[: len(pending.labels)] = np.arange(len(pending.labels))
        yield _batch(pending, index, len(pending.labels), keys, one_hot_column, ones)


def _batch(
    part: Part, index: np.ndarray, real: int, keys: Sequence[str], one_hot_column: Mapping[str, int], ones: np.ndarray
) -> Batch:
    """Rows ``index`` of ``part`` as a batch whose rows after the first ``real`` are padding."""
    rows = _take(part, index)
    labels = rows.labels.astype(np.float32)  # a copy: padding is marked below
    labels[real:] = PADDING_LABEL
    kjt = sparse_features(keys, one_hot_column, rows.sparse, rows.multi_hot, ones[: len(index)])
    return Batch(dense_features=torch.from_numpy(rows.dense), sparse_features=kjt, labels=torch.from_numpy(labels))


def _take(part: Part, index: np.ndarray) -> Part:
    """Rows ``index`` (int64 ``[n]``) of ``part``, copied."""
    multi: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for name, (values, lengths) in part.multi_hot.items():
        starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        counts = lengths[index].astype(np.int64)
        ends = np.cumsum(counts)
        # value j of the result belongs to row s: starts[index[s]] + (j - first value of s)
        positions = np.repeat(starts[index] - (ends - counts), counts) + np.arange(int(ends[-1]) if len(ends) else 0)
        multi[name] = (values[positions], lengths[index])
    return Part(part.labels[index], part.dense[index], part.sparse[index], multi)


def _concatenate(first: Part, second: Part) -> Part:
    """``first``'s rows, then ``second``'s."""
    multi = {
        name: (np.concatenate([values, second.multi_hot[name][0]]), np.concatenate([lengths, second.multi_hot[name][1]]))
        for name, (values, lengths) in first.multi_hot.items()
    }
    return Part(np.concatenate([first.labels, second.labels]), np.concatenate([first.dense, second.dense]),
                np.concatenate([first.sparse, second.sparse]), multi)
