"""One part of a preprocessed split on disk: ``<split>/part-NNNNN/``, a folder of npy files.

The layout (also in :mod:`iarm_torchrec.data.spec`)::

    labels.npy           float32 [n]      (0/1)
    dense.npy            float32 [n, N]   (columns in ``spec.dense`` order)
    sparse.npy           int32   [n, F1]  (one-hot fields, ``spec.one_hot_fields`` order)
    <field>.values.npy   int32   [nnz]    (one multi-hot field's ids, sample after sample)
    <field>.lengths.npy  int32   [n]      (its ids per sample, >= 0)

:func:`write_part` is the one writer (preprocessing, tests, examples); it writes into a hidden
temporary folder (``.part-NNNNN.PID.tmp``, not matched by ``part-*``) renamed when complete.
:func:`read_part` reads one back into memory; training reads whole splits memory-mapped through
:class:`~iarm_torchrec.data.loader.ShardedSplit`. Numpy only: preprocessing workers import it.

Example::

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()) / "train" / "part-00000"
    >>> _ = write_part(folder, [0, 1], [[0.5], [1.5]], [[3], [4]], {"tags": ([1, 2, 2], [1, 2])})
    >>> sorted(p.name for p in folder.iterdir())
    ['dense.npy', 'labels.npy', 'sparse.npy', 'tags.lengths.npy', 'tags.values.npy']
    >>> part = read_part(folder)
    >>> part.labels.tolist(), part.sparse.dtype, part.multi_hot["tags"][0].tolist()
    ([0.0, 1.0], dtype('int32'), [1, 2, 2])
"""

import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from iarm_torchrec.files import PathLike, atomic_path

LABELS_FILE = "labels.npy"
DENSE_FILE = "dense.npy"
SPARSE_FILE = "sparse.npy"
VALUES_SUFFIX = ".values.npy"
LENGTHS_SUFFIX = ".lengths.npy"


def values_file(field: str) -> str:
    """A multi-hot field's ids file: ``<field>.values.npy``."""
    return field + VALUES_SUFFIX


def lengths_file(field: str) -> str:
    """A multi-hot field's per-sample counts file: ``<field>.lengths.npy``."""
    return field + LENGTHS_SUFFIX


class Part(NamedTuple):
    """One part's arrays: ``labels [n]``, ``dense n x N``, one-hot ``sparse n x F1`` and, per
    multi-hot field, ``(values [nnz], lengths [n])``."""

    labels: np.ndarray
    dense: np.ndarray
    sparse: np.ndarray
    multi_hot: Dict[str, Tuple[np.ndarray, np.ndarray]]


def write_part(
    folder: PathLike,
    labels: Any,
    dense: Any,
    sparse: Any,
    multi_hot: Optional[Mapping[str, Tuple[Any, Any]]] = None,
) -> Path:
    """Write one part to ``folder`` (a ``part-NNNNN`` folder, not there yet) atomically.

    Args:
        labels: ``n`` labels (stored float32).
        dense: ``n x N`` numerical features (float32; ``N`` may be 0).
        sparse: ``n x F1`` one-hot ids (int32; ``F1`` may be 0).
        multi_hot: per multi-hot field, ``(values, lengths)``: its ids of all samples, one
            sample after the other, and each sample's count (int32).

    Returns ``folder``.
    """
    labels = np.asarray(labels, dtype=np.float32)
    dense = np.asarray(dense, dtype=np.float32)
    sparse = np.asarray(sparse, dtype=np.int32)
    n = len(labels)
    columns = {LABELS_FILE: labels, DENSE_FILE: dense, SPARSE_FILE: sparse}
    for name, (values, lengths) in (multi_hot or {}).items():
        columns[values_file(name)] = np.asarray(values, dtype=np.int32)
        columns[lengths_file(name)] = lengths = np.asarray(lengths, dtype=np.int32)
        if len(lengths) != n or int(lengths.astype(np.int64).sum()) != len(columns[values_file(name)]):
            raise ValueError(f"{name}: {len(lengths)} lengths summing to {int(lengths.sum())} for {n} rows "
                             f"and {len(columns[values_file(name)])} values")
    if dense.ndim != 2 or sparse.ndim != 2 or len(dense) != n or len(sparse) != n:
        raise ValueError(f"labels {labels.shape}, dense {dense.shape} and sparse {sparse.shape}: "
                         "need n, n x N and n x F1")
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        shutil.rmtree(tmp, ignore_errors=True)  # a crashed writer's leftover of the same name
        tmp.mkdir()
        for file, array in columns.items():
            np.save(tmp / file, array)
    return folder


def read_part(folder: PathLike) -> Part:
    """The arrays of one part written by :func:`write_part`, in memory."""
    folder = Path(folder)
    multi_hot = {
        p.name[: -len(VALUES_SUFFIX)]: (np.load(p), np.load(folder / lengths_file(p.name[: -len(VALUES_SUFFIX)])))
        for p in sorted(folder.glob("*" + VALUES_SUFFIX))
    }
    return Part(np.load(folder / LABELS_FILE), np.load(folder / DENSE_FILE), np.load(folder / SPARSE_FILE), multi_hot)
