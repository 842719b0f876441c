"""Preprocessed shards -> TorchRec ``Batch``es, one slice per rank, equal batch counts everywhere.

The loader reads a split of a preprocessed folder (layout: :mod:`iarm_torchrec.data.spec`)
through memory maps and gathers each batch with a few vectorised numpy ``take``\\ s. Its
contract with distributed training:

* **Equal batch counts on every rank.** A sharded model runs collectives every step, so a
  rank with one batch more would hang the job. ``len(loader)`` is the same on every rank.
* **Training** (``drop_last=True``, what the trainer uses): step ``k`` is the same *global*
  batch whatever the number of ranks. With ``B = world_size * batch_size``, step ``k`` takes
  samples ``[k B, (k + 1) B)`` of the epoch's (optionally shuffled) order and rank ``r`` its
  ``r``-th sub-batch of ``batch_size``; so 1 rank with batch ``B`` and N ranks with ``B / N``
  train on the same global batches, and gradients averaged over ranks equal those of the one big
  batch. The last ``n mod B`` samples of the order are left out, different ones each shuffled epoch.
* **Evaluation** (``drop_last=False``): every sample is yielded exactly once across ranks, rank
  ``r`` taking the ``r``-th contiguous slice of the order. The last batches of each rank are
  padded to ``batch_size`` with copies of a real row whose label is :data:`PADDING_LABEL`
  (``-1.0``); the evaluator drops rows with that label. ``loader.num_real_rows`` is this rank's
  count of real rows.
* **Shuffling** is seeded: the permutation, ``np.random.default_rng([seed, epoch]).permutation(n)``,
  depends on ``(seed, epoch)`` only, so every rank computes the same one and each epoch gets a new
  one (:meth:`ShardedBatchLoader.set_epoch`).
* **Resume**: ``set_epoch(e, start_batch=k)`` yields exactly the batches ``k, k+1, ...`` an
  uninterrupted epoch ``e`` would have yielded; the trainer passes its own count of trained
  steps (a pipeline such as ``TrainPipelineSparseDist`` pulls batches ahead of them).
"""

import math
import queue
import threading
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from iarm_torchrec.data.parts import DENSE_FILE, LABELS_FILE, SPARSE_FILE, lengths_file, values_file
from iarm_torchrec.data.spec import SPLITS, FeatureSpec
from iarm_torchrec.files import PathLike

PADDING_LABEL: float = -1.0
"""Label of the padding rows of ``drop_last=False`` loaders; drop ``labels == PADDING_LABEL``."""


class _Location:
    """Where some global rows lie among parts: per part holding any, the rows' positions in the
    request and their row numbers inside the part (computed once, shared by all columns)."""

    def __init__(self, starts: np.ndarray, index: np.ndarray) -> None:
        part = np.searchsorted(starts, index, side="right") - 1
        order = np.argsort(part.astype(np.uint16) if len(starts) <= 2**16 else part, kind="stable")  # radix sort
        bounds = np.searchsorted(part[order], np.arange(len(starts)))
        self.size = len(index)
        self.pieces: List[Tuple[int, np.ndarray, np.ndarray]] = [
            (p, order[lo:hi], index[order[lo:hi]] - starts[p])
            for p, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
            if hi > lo
        ]


class _Column:
    """One logical array made of the memory-mapped arrays of several parts, gathered by global index."""

    def __init__(self, parts: Sequence[np.ndarray]) -> None:
        self.parts: List[np.ndarray] = list(parts)
        self.starts: np.ndarray = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: np.ndarray) -> _Location:
        return _Location(self.starts, index)

    def take(self, index: np.ndarray, location: Optional[_Location] = None) -> np.ndarray:
        """Rows ``index`` (global, int64) of the concatenated parts, as one in-memory array;
        ``location``: ``locate(index)`` of a column with the same part sizes, to reuse."""
        location = location or self.locate(index)
        if len(location.pieces) == 1:  # all in one part: the local rows are in request order
            p, _, local = location.pieces[0]
            return self.parts[p][local]
        first = self.parts[0]
        out = np.empty((location.size,) + first.shape[1:], dtype=first.dtype)
        for p, positions, local in location.pieces:
            out[positions] = self.parts[p][local]
        return out


class _MultiHotColumn:
    """A multi-hot field: per-sample ``lengths`` and the concatenated ``values`` of all parts."""

    def __init__(self, lengths: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> None:
        self.lengths = _Column(lengths)
        self.values = _Column(values)
        # where each sample's ids start in the concatenated values (kept in memory: n + 1 int64)
        self.value_starts: np.ndarray = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(np.concatenate([np.asarray(p, dtype=np.int64) for p in lengths]), out=self.value_starts[1:])

    def take(self, index: np.ndarray, location: Optional[_Location] = None) -> Tuple[np.ndarray, np.ndarray]:
        """``(values, lengths)`` of samples ``index``: ``lengths`` int32 ``[B]``, ``values`` ``[sum(lengths)]``."""
        lengths = self.lengths.take(index, location)
        counts = lengths.astype(np.int64)
        ends = np.cumsum(counts)
        # value position j of the batch belongs to sample s: start[s] + (j - first position of s)
        positions = np.repeat(self.value_starts[index] - (ends - counts), counts) + np.arange(ends[-1])
        return self.values.take(positions), lengths


class ShardedSplit:
    """One split (``train``/``valid``/``test``) of a preprocessed folder, memory-mapped.

    Checks every part against the spec (row counts, column counts, multi-hot sizes) and
    names the offending file when something does not fit.

    Args:
        data_dir: the preprocessed folder (holds ``spec.json``).
        split: which split to read.

    Example::

        >>> import tempfile
        >>> from iarm_torchrec.data.parts import write_part
        >>> from iarm_torchrec.data.spec import SparseFieldSpec
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = FeatureSpec("toy", [SparseFieldSpec("item", 5)], dense=["x"]).save(d)
        >>> _ = write_part(d / "train" / "part-00000", [0, 1, 1], np.ones((3, 1)), [[0], [4], [2]])
        >>> split = ShardedSplit(d, "train")
        >>> len(split), split.sparse.take(np.array([2, 0])).tolist()
        (3, [[2], [0]])
    """

    def __init__(self, data_dir: PathLike, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.spec: FeatureSpec = FeatureSpec.load(data_dir)
        split_dir = Path(data_dir) / split
        parts = sorted(p for p in split_dir.glob("part-*") if p.is_dir())
        if not parts:
            present = [s for s in SPLITS if (Path(data_dir) / s).is_dir()]
            raise FileNotFoundError(f"{split_dir}: no part-NNNNN folders; splits present: {present}")
        labels, dense, sparse = [], [], []
        multi: Dict[str, Tuple[List[np.ndarray], List[np.ndarray]]] = {f: ([], []) for f in self.spec.multi_hot_fields}
        for part in parts:
            n = len(self._open(labels, part / LABELS_FILE, None))
            self._open(dense, part / DENSE_FILE, n, len(self.spec.dense))
            self._open(sparse, part / SPARSE_FILE, n, len(self.spec.one_hot_fields))
            for name, (lengths, values) in multi.items():
                lens = self._open(lengths, part / lengths_file(name), n)
                vals = self._open(values, part / values_file(name), None)
                nnz = int(np.asarray(lens, dtype=np.int64).sum())
                if len(vals) != nnz:
                    raise ValueError(f"{part / values_file(name)}: {len(vals)} ids, but its lengths sum to {nnz}")
        self.labels = _Column(labels)
        self.dense = _Column(dense)
        self.sparse = _Column(sparse)
        self.multi_hot: Dict[str, _MultiHotColumn] = {n: _MultiHotColumn(l, v) for n, (l, v) in multi.items()}
        expected = self.spec.rows.get(split)
        if expected is not None and expected != len(self.labels):
            raise ValueError(f"{split_dir}: {len(self.labels)} rows in its parts, spec.json says {expected}")

    @staticmethod
    def _open(into: List[np.ndarray], path: Path, rows: Optional[int], cols: Optional[int] = None) -> np.ndarray:
        """Memory-map ``path`` into ``into``: ``rows`` long (any length if None), 1-d or ``cols`` wide."""
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (see the layout in iarm_torchrec/data/spec.py)")
        array = np.asarray(np.load(path, mmap_mode="r"))  # a plain view of the map: faster indexing
        want = (len(array) if rows is None else rows,) + (() if cols is None else (cols,))
        if array.shape != want:
            raise ValueError(f"{path}: shape {array.shape}, expected {want}")
        into.append(array)
        return array

    def __len__(self) -> int:
        return len(self.labels)

    def gather(
        self, index: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """Samples ``index``: ``labels [B]``, ``dense B x N``, one-hot ids ``B x F1`` and, per
        multi-hot field, ``(values, lengths)``; the parts are located once for all columns."""
        where = self.labels.locate(index)
        multi_hot = {name: column.take(index, where) for name, column in self.multi_hot.items()}
        return self.labels.take(index, where), self.dense.take(index, where), self.sparse.take(index, where), multi_hot


class ShardedBatchLoader(Iterable[Batch]):
    """Iterate this rank's fixed-size :class:`~torchrec.datasets.utils.Batch`\\ es of a split.

    Each batch holds ``dense_features`` float32 ``B x N`` (``spec.dense`` order),
    ``sparse_features`` a ``KeyedJaggedTensor`` keyed by the spec's sparse fields in order
    (int32 ids; length 1 per sample for one-hot fields, the sample's id count for multi-hot
    ones) and ``labels`` float32 ``B`` (:data:`PADDING_LABEL` on padding rows).

    Args:
        data_dir: a preprocessed folder.
        split: ``train``, ``valid`` or ``test``.
        batch_size: ``B``, per rank.
        rank / world_size: this process's part of the data.
        shuffle: a new seeded permutation each epoch.
        seed: the shuffling seed (the same on every rank).
        drop_last: ``True`` (training) yields only full batches of real rows, step ``k`` being
            rank ``rank``'s sub-batch of global batch ``k``; ``False`` (evaluation) yields every
            sample once across ranks, each rank a contiguous slice, padding the last batches.
        prefetch: batches prepared ahead by a background thread (0: none).
        pin_memory: pin batches for fast host-to-device copies (default: when CUDA is available).

    Example::

        >>> import tempfile
        >>> from iarm_torchrec.data.parts import write_part
        >>> from iarm_torchrec.data.spec import SparseFieldSpec
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = FeatureSpec("toy", [SparseFieldSpec("user", 9), SparseFieldSpec("tags", 5, True, 2)]).save(d)
        >>> part = write_part(d / "test" / "part-00000", [0, 1, 1], np.zeros((3, 0)), [[7], [8], [6]],
        ...                   {"tags": ([1, 3, 4], [2, 0, 1])})
        >>> loader = ShardedBatchLoader(d, "test", batch_size=2, drop_last=False)
        >>> [b.labels.tolist() for b in loader]
        [[0.0, 1.0], [1.0, -1.0]]
        >>> kjt = next(iter(loader)).sparse_features
        >>> kjt.keys(), kjt["tags"].lengths().tolist(), kjt["tags"].values().tolist()
        (['user', 'tags'], [2, 0], [1, 3])

    Training's layout: with 2 ranks of 2, step 0 is samples 0-3 (rank 0: 0, 1; rank 1: 2, 3)::

        >>> e = Path(tempfile.mkdtemp()); _ = FeatureSpec("toy", [SparseFieldSpec("item", 9)]).save(e)
        >>> _ = write_part(e / "train" / "part-00000", np.zeros(9), np.zeros((9, 0)), np.arange(9)[:, None])
        >>> [ShardedBatchLoader(e, "train", 2, rank=r, world_size=2).rank_rows(0).tolist() for r in (0, 1)]
        [[0, 1, 4, 5], [2, 3, 6, 7]]
    """

    def __init__(
        self,
        data_dir: PathLike,
        split: str,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = True,
        prefetch: int = 2,
        pin_memory: Optional[bool] = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.data: ShardedSplit = ShardedSplit(data_dir, split)
        self.spec: FeatureSpec = self.data.spec
        self.split = split
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.prefetch = prefetch
        self.pin_memory: bool = torch.cuda.is_available() if pin_memory is None else pin_memory
        n = len(self.data)
        if n == 0:
            raise ValueError(f"{data_dir}/{split}: the split is empty")
        if drop_last:
            self._num_batches = n // (world_size * batch_size)
            if self._num_batches == 0:
                raise ValueError(
                    f"{data_dir}/{split}: {n} samples are fewer than world_size * batch_size = "
                    f"{world_size * batch_size}, so drop_last=True leaves no batch; lower batch_size"
                )
            self._start = -1  # no contiguous slice: this rank's rows lie in every global batch
            self._num_real_rows = self._num_batches * batch_size
        else:
            # every sample once: ranks get n // world_size samples, the first n % world_size one more
            size = n // world_size + (rank < n % world_size)
            self._num_batches = math.ceil(math.ceil(n / world_size) / batch_size)
            self._start = rank * (n // world_size) + min(rank, n % world_size)
            self._num_real_rows = size
        self._epoch = 0
        self._next_batch = 0
        self._keys: List[str] = [f.name for f in self.spec.sparse]
        self._one_hot_column = {name: j for j, name in enumerate(self.spec.one_hot_fields)}
        self._ones = np.ones(batch_size, dtype=np.int32)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return self._num_batches

    @property
    def num_real_rows(self) -> int:
        """Rows of this rank's epoch that are real samples (the rest is padding)."""
        return self._num_real_rows

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next pass epoch ``epoch`` (its own permutation), starting at batch ``start_batch``."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self._epoch = epoch
        self._next_batch = start_batch

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of all samples: ``np.random.default_rng([seed, epoch]).permutation(n)``
        when shuffling, else ``0..n-1``; the same on every rank."""
        n = len(self.data)
        return np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)

    def rank_rows(self, epoch: int) -> np.ndarray:
        """This rank's global sample indices for ``epoch`` in batch order, ``len(self) * B``
        long; ``-1`` marks padding (evaluation only)."""
        order = self.order(epoch)
        b = self.batch_size
        if self.drop_last:  # global batch k = order[k W B : (k + 1) W B], rank r its r-th sub-batch
            steps, w = len(self), self.world_size
            return order[: steps * w * b].reshape(steps, w, b)[:, self.rank, :].reshape(-1)
        start, size = self._start, self._num_real_rows
        rows = np.full(len(self) * b, -1, dtype=np.int64)
        rows[:size] = order[start : start + size]
        return rows

    def __iter__(self) -> Iterator[Batch]:
        epoch, first = self._epoch, self._next_batch
        rows = self.rank_rows(epoch)
        b = self.batch_size
        batches: Iterator[Batch] = (self._batch(rows[k * b : (k + 1) * b]) for k in range(first, len(self)))
        if self.prefetch:
            batches = _prefetched(batches, self.prefetch)
        for batch in batches:
            self._next_batch += 1
            yield batch
        self._epoch, self._next_batch = epoch + 1, 0

    def _batch(self, index: np.ndarray) -> Batch:
        padding = index < 0
        index = np.where(padding, max(index[0], 0), index)  # padding rows copy a real row
        labels, dense, one_hot, multi_hot = self.data.gather(index)
        labels = labels.astype(np.float32)  # a copy: padding is marked below
        labels[padding] = PADDING_LABEL
        dense = dense.astype(np.float32, copy=False)
        kjt = sparse_features(self._keys, self._one_hot_column, one_hot, multi_hot, self._ones[: len(index)])
        batch = Batch(dense_features=torch.from_numpy(dense), sparse_features=kjt, labels=torch.from_numpy(labels))
        return batch.pin_memory() if self.pin_memory else batch


def sparse_features(
    keys: Sequence[str],
    one_hot_column: Mapping[str, int],
    one_hot: np.ndarray,
    multi_hot: Mapping[str, Tuple[np.ndarray, np.ndarray]],
    ones: Optional[np.ndarray] = None,
) -> KeyedJaggedTensor:
    """The ``KeyedJaggedTensor`` of a batch, keyed by ``keys`` (the spec's sparse fields in order):
    one-hot ids ``[B, F1]`` (column ``one_hot_column[key]``) and per multi-hot field ``(values,
    lengths)``; ``ones`` is a reusable ``int32 [B]`` of ones. The one layout of model inputs, for
    the loader and for online scoring alike."""
    batch = one_hot.shape[0]
    ones = np.ones(batch, dtype=np.int32) if ones is None else ones
    columns = one_hot.T  # F1 x B
    values: List[np.ndarray] = []
    lengths: List[np.ndarray] = []
    for key in keys:
        if key in one_hot_column:
            values.append(columns[one_hot_column[key]])
            lengths.append(ones)
        else:
            values.append(multi_hot[key][0])
            lengths.append(multi_hot[key][1])
    return KeyedJaggedTensor(
        keys=list(keys),
        values=torch.from_numpy(np.concatenate(values).astype(np.int32, copy=False)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32, copy=False)),
        stride=batch,
        length_per_key=[len(v) for v in values],
    )


def _prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``batches`` in a background thread, ``depth`` ahead; stops the thread when the
    consumer stops early, re-raises its errors."""
    buffer: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not offer(item):
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer
            offer(error)

    thread = threading.Thread(target=produce, name="iarm-batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
