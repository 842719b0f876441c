"""Shared test helpers: the real-data folder and a writer of small preprocessed folders."""

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import pytest

from iarm_torchrec.data import write_part
from iarm_torchrec.data.spec import FeatureSpec, SparseFieldSpec

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (read-only ../shared/data is only on the development machine)")
    return path


def write_preprocessed(
    data_dir: Path,
    rows: Dict[str, int],
    num_dense: int = 3,
    vocab: Sequence[int] = (11, 7),
    multi_hot: Sequence[Tuple[str, int, int]] = (("tags", 5, 3),),
    rows_per_part: Optional[int] = None,
    seed: int = 0,
) -> FeatureSpec:
    """Write random data in the layout of :mod:`iarm_torchrec.data.spec`.

    Each split's row ``i`` has ``dense[:, 0] == i`` and label ``i % 2`` so tests can tell rows
    apart; one-hot fields are ``c0, c1, ...`` (sizes ``vocab``), multi-hot fields are
    ``(name, vocab_size, max_length)`` with lengths in ``[0, max_length]``; each split is cut
    into parts of ``rows_per_part`` rows.
    """
    rng = np.random.default_rng(seed)
    sparse = [SparseFieldSpec(f"c{j}", v) for j, v in enumerate(vocab)]
    sparse += [SparseFieldSpec(name, v, True, m) for name, v, m in multi_hot]
    spec = FeatureSpec("toy", sparse, dense=[f"d{j}" for j in range(num_dense)], rows=dict(rows))
    data_dir.mkdir(parents=True, exist_ok=True)
    spec.save(data_dir)
    for split, n in rows.items():
        index = np.arange(n)
        dense = rng.random((n, num_dense), dtype=np.float32)
        if num_dense:
            dense[:, 0] = index
        labels = (index % 2).astype(np.float32)
        sparse = np.stack([rng.integers(0, v, n) for v in vocab], axis=1).astype(np.int32).reshape(n, -1)
        multi = {}
        for name, v, m in multi_hot:
            lengths = rng.integers(0, m + 1, n).astype(np.int32)
            multi[name] = (rng.integers(0, v, int(lengths.sum())).astype(np.int32), lengths)
        step = rows_per_part or max(n, 1)
        for p, start in enumerate(range(0, n, step)):
            stop = min(start + step, n)
            part_multi = {}
            for name, (values, lengths) in multi.items():
                ends = np.concatenate([[0], np.cumsum(lengths.astype(np.int64))])
                part_multi[name] = (values[ends[start] : ends[stop]], lengths[start:stop])
            write_part(data_dir / split / f"part-{p:05d}", labels[start:stop], dense[start:stop], sparse[start:stop], part_multi)
    return spec
