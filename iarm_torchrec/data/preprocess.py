"""Preprocessing: original files -> vocabularies (train split only) -> npy shards + ``spec.json``.

Entry points: :func:`preprocess` (a dataset, with splits and new vocabularies) and :func:`encode`
(a new raw file, e.g. Kaggle Criteo's unlabelled ``test.txt``, with an existing dataset's
vocabularies and numeric statistics, for ``iarm predict``). Both write the layout documented in
:mod:`iarm_torchrec.data.spec`, plus ``DATA/vocab/<field>.npy``: a field's kept keys (sorted
``uint64``, see :mod:`iarm_torchrec.data.vocab`), key ``keys[i]`` having id ``i + 1``.

How it streams (bounded memory whatever the file size):

0. *plan*: one sequential read cuts the source into chunks of whole lines (``chunk_mb``) and counts
   their lines, so every row has a global index before any parsing.
1. *count* (skipped when every field is hashed and no numeric statistic is needed): workers parse
   chunks in parallel and return, for the train rows only, each field's distinct keys with counts
   and each numeric field's statistics; the parent merges them (:class:`~iarm_torchrec.data.vocab.KeyCounter`,
   16 bytes per distinct value: Kaggle Criteo's ~34M distinct values over 26 fields take ~0.5 GB)
   and keeps keys seen ``min_count`` times.
2. *encode*: workers parse chunks again, map keys to ids, transform numbers, and each writes its
   own ``<split>/part-NNNNN`` (``NNNNN`` = chunk index), so memory is per chunk, not per file.

Per-value memory grows only in step 1 and only with distinct values; for sources with hundreds of
millions of distinct values (Criteo Terabyte) use ``hash_buckets``, which skips counting.
Ids: 0 is the missing/out-of-vocabulary id of every field.
"""

import contextlib
import logging
import multiprocessing
import os
import shutil
from collections import deque
from multiprocessing.pool import Pool, ThreadPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from tqdm import tqdm

from iarm_torchrec.data.builtin import builtin_reader
from iarm_torchrec.data.encoders import Lookup, LookupPlan, field_lookups, make_lookup, transform_dense
from iarm_torchrec.data.movielens import MovieLensReader
from iarm_torchrec.data.numeric import BUCKETS, TRANSFORMS, NumericStats, bucketize
from iarm_torchrec.data.parts import write_part
from iarm_torchrec.data.rows import MAX_FIELD_BYTES, MAX_LINE_BYTES, Chunk, RawRows, RowReader, chunk_payloads
from iarm_torchrec.data.spec import SPEC_FILE, SPLITS, FeatureSpec, SparseFieldSpec
from iarm_torchrec.data.splits import SplitConfig
from iarm_torchrec.data.vocab import KEY_SCHEME, OOV_ID, KeyCounter, Vocabulary, count_keys
from iarm_torchrec.locks import folder_lock

logger = logging.getLogger(__name__)

DATASETS = ("criteo", "avazu", "movielens-1m", "tabular")
VOCAB_DIR = "vocab"
# Per dataset: default min_count (AutoInt's thresholds: 10 for Criteo, 5 for Avazu) and numeric transform.
DEFAULTS: Dict[str, Dict[str, Any]] = {
    "criteo": {"min_count": 10, "numeric": "log1p"},
    "avazu": {"min_count": 5, "numeric": "none"},
    "movielens-1m": {"min_count": 1, "numeric": "standard"},
    "tabular": {"min_count": 1, "numeric": "none"},  # a schema's min_count / numeric override these
}
T = TypeVar("T")


def make_reader(
    dataset: str,
    source: str,
    *,
    field_set: Optional[str] = None,
    labelled: bool = True,
    skip_bad_rows: bool = False,
    max_field_bytes: int = MAX_FIELD_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
    keep_neutral: bool = False,
    schema: Any = None,
    explicit: bool = False,
) -> RowReader:
    """The reader of ``dataset`` (one of ``DATASETS``) for ``source`` (a file or folder, any iopath path);
    ``keep_neutral`` keeps MovieLens' rating-3 rows (for scoring every input row). ``tabular``
    reads what ``schema`` (a schema file, mapping or :class:`~iarm_torchrec.data.schema.TabularSchema`)
    describes; with ``explicit`` it reads ``source`` itself instead of the schema's files. Criteo
    and Avazu are read the same way, by their schemas shipped in the package
    (:mod:`iarm_torchrec.data.builtin`); MovieLens, a join of three files, by its own reader."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    limits = dict(skip_bad_rows=skip_bad_rows, max_field_bytes=max_field_bytes, max_line_bytes=max_line_bytes)
    if dataset == "tabular":
        from iarm_torchrec.data.tabular import TabularReader

        if schema is None:
            raise ValueError("dataset tabular needs a schema file (--schema FILE); see iarm_torchrec/data/schema.py")
        if field_set not in (None, "default"):
            raise ValueError(f"field_set applies to movielens-1m only, not to tabular (got {field_set!r})")
        return TabularReader(source, schema=schema, labelled=labelled, keep_neutral=keep_neutral, explicit=explicit, **limits)
    if schema is not None:
        raise ValueError(f"schema applies to dataset tabular only, not to {dataset}")
    if dataset == "movielens-1m":
        return MovieLensReader(source, field_set=field_set or "paper", labelled=labelled, keep_neutral=keep_neutral, **limits)
    if field_set not in (None, "default"):
        raise ValueError(f"field_set applies to movielens-1m only; {dataset} has one field set (got {field_set!r})")
    return builtin_reader(dataset, source, labelled=labelled, **limits)


@dataclass
class _Job:
    """What a worker needs for a pass (pickled to it with each chunk)."""

    reader: RowReader
    splits: Optional[SplitConfig]  # None: every row goes to ``target``
    total: int  # rows the time split cuts (when rows carry no rank of their own)
    out_dir: str = ""
    target: str = "test"
    lookups: Dict[str, LookupPlan] = field(default_factory=dict)  # field -> ("vocab", path) | ("hash", n)
    numeric: str = "none"
    stats: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def codes(self, rows: RawRows) -> np.ndarray:
        """Each row's split code (index in ``SPLITS``)."""
        if self.splits is None:
            return np.full(len(rows), SPLITS.index(self.target), dtype=np.uint8)
        if rows.split_codes is not None:  # the reader's (pre-split files, a time column)
            return rows.split_codes
        if rows.rank is not None:
            return self.splits.assign(rows.rows, rows.rank, rows.ranked or len(rows))
        return self.splits.assign(rows.rows, rows.rows, self.total)


@dataclass
class _Counts:
    keys: Dict[str, Tuple[np.ndarray, np.ndarray]]
    stats: Dict[str, NumericStats]


@dataclass
class _Written:
    rows: Dict[str, int]
    positives: Dict[str, int]
    max_length: Dict[str, int]
    skipped: int
    skipped_examples: List[str]
    neutral: int = 0


def _multi_values(rows: RawRows, name: str, keep: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    values, lengths = rows.multi_hot[name]
    return values[np.repeat(keep, lengths)], lengths[keep]


def _count_chunk(job: _Job, chunk: Chunk, data: Optional[bytes]) -> _Counts:
    """Pass 1 on one chunk: distinct keys with counts and numeric statistics of its train rows."""
    rows = job.reader.parse(chunk, data)
    train = job.codes(rows) == 0
    keys = {}
    for j, name in enumerate(job.reader.one_hot_fields):
        if job.lookups[name][0] == "vocab":
            keys[name] = count_keys(rows.sparse[train, j])
    for name in job.reader.multi_hot_fields:
        if job.lookups[name][0] == "vocab":
            keys[name] = count_keys(_multi_values(rows, name, train)[0])
    stats = {name: NumericStats.of(rows.dense[train, j]) for j, name in enumerate(job.reader.dense_fields)}
    return _Counts(keys, stats)


_LOOKUP_CACHE: Dict[LookupPlan, Lookup] = {}


def _lookup(kind: str, arg: Union[str, int]) -> Lookup:
    """A field's vocabulary (memory-mapped, cached per process) or hashing."""
    if (kind, arg) not in _LOOKUP_CACHE:
        _LOOKUP_CACHE[(kind, arg)] = make_lookup((kind, arg))
    return _LOOKUP_CACHE[(kind, arg)]


def _encode_chunk(job: _Job, chunk: Chunk, data: Optional[bytes]) -> _Written:
    """Pass 2 on one chunk: ids and transformed numbers, written as ``<split>/part-{chunk.index:05d}``."""
    reader = job.reader
    rows = job.reader.parse(chunk, data)
    codes = job.codes(rows)
    sparse = np.empty(rows.sparse.shape, dtype=np.int32)
    for j, name in enumerate(reader.one_hot_fields):
        sparse[:, j] = _lookup(*job.lookups[name]).ids(rows.sparse[:, j])
    if job.numeric == "bucketize":  # numerical fields become categorical ones, after the others
        sparse = np.concatenate([sparse, bucketize(rows.dense).reshape(rows.dense.shape)], axis=1)
        dense = np.empty((len(rows), 0), dtype=np.float32)
    else:
        dense = transform_dense(rows.dense, reader.dense_fields, job.numeric, job.stats, getattr(reader, "numeric_transforms", {}))
    labels = rows.labels if rows.labels is not None else np.zeros(len(rows), dtype=np.float32)
    written = _Written({}, {}, {}, rows.skipped, rows.skipped_examples, rows.neutral)
    for code, split in enumerate(SPLITS):
        keep = codes == code
        if not keep.any():
            continue
        multi = {}
        for name in reader.multi_hot_fields:
            values, lengths = _multi_values(rows, name, keep)
            multi[name] = (_lookup(*job.lookups[name]).ids(values), lengths.astype(np.int32))
            written.max_length[name] = max(written.max_length.get(name, 0), int(lengths.max(initial=0)))
        write_part(Path(job.out_dir) / split / f"part-{chunk.index:05d}", labels[keep], dense[keep], sparse[keep], multi)
        written.rows[split] = int(keep.sum())
        written.positives[split] = int(labels[keep].sum())
    return written


def _numeric_of(reader: RowReader, name: str, default: str) -> str:
    """A numeric field's transform: the reader's own for it (a schema's ``transform``), else ``default``."""
    return getattr(reader, "numeric_transforms", {}).get(name, default)


WORKER_ARROW_POOL = "jemalloc"
"""Arrow's allocator in the worker processes, unless ``ARROW_DEFAULT_MEMORY_POOL`` names another:
jemalloc hands a parsed chunk's memory back sooner than Arrow's default (mimalloc). Measured on a
1M-row Criteo TSV, 2 workers: peak RSS of the process tree 473-481 MiB against 561-568, at the same
rate (``benchmarks/results/preprocess_tabular.md``)."""


@contextlib.contextmanager
def _pool(workers: int, chunks: int) -> Iterator[Optional[Pool]]:
    """Worker processes for every pass of one run (``None``: run inline, for one worker or one chunk)."""
    if workers <= 1 or chunks <= 1:
        yield None
        return
    chosen = os.environ.get("ARROW_DEFAULT_MEMORY_POOL")
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = chosen or WORKER_ARROW_POOL  # read by the spawned workers only
    try:
        pool = multiprocessing.get_context("spawn").Pool(min(workers, chunks))
    finally:
        if chosen is None:
            del os.environ["ARROW_DEFAULT_MEMORY_POOL"]
    with pool:
        yield pool


@contextlib.contextmanager
def _threads(workers: int, chunks: int) -> Iterator[Optional[Pool]]:
    """Threads of this process in place of :func:`_pool`'s processes (``None``: inline, for one
    worker or one chunk). Parsing (Arrow) and the vocabulary lookups (numpy) release the GIL, so
    threads encode chunks side by side: a million Criteo rows in 15 chunks, 2 threads against
    inline, quiet machine, 2 alternations: 2.7-3.0 s against 4.8-5.4 s, the same bytes."""
    if workers <= 1 or chunks <= 1:
        yield None
        return
    with ThreadPool(min(workers, chunks)) as pool:
        yield pool


def _map_chunks(
    fn: Callable[[_Job, Chunk, Optional[bytes]], T], job: _Job, chunks: Sequence[Chunk], pool: Optional[Pool], desc: str
) -> Iterator[T]:
    """``fn(job, chunk, bytes-or-None)`` over the chunks, in order, on the pool's processes or threads (or inline).

    At most two chunks per process are in flight, so gzip bytes fed by this process stay bounded.
    """
    payloads = chunk_payloads(chunks)
    with tqdm(total=len(chunks), desc=desc, unit="chunk", disable=None) as bar:
        if pool is None:
            for chunk, data in zip(chunks, payloads):
                yield fn(job, chunk, data)
                bar.update()
            return
        pending: deque = deque()
        for chunk, data in zip(chunks, payloads):
            pending.append(pool.apply_async(fn, (job, chunk, data)))
            if len(pending) >= 2 * pool._processes:  # type: ignore[attr-defined]
                yield pending.popleft().get()
                bar.update()
        while pending:
            yield pending.popleft().get()
            bar.update()


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _prepare_out(out_dir: str, overwrite: bool) -> Path:
    out = Path(out_dir)
    existing = [p for p in [SPEC_FILE, VOCAB_DIR, *SPLITS] if (out / p).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds {existing}; pass overwrite=True (--overwrite) to replace them")
    for p in existing:
        shutil.rmtree(out / p) if (out / p).is_dir() else (out / p).unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _writing(out_dir: str, overwrite: bool) -> Iterator[Path]:
    """``out_dir`` prepared (:func:`_prepare_out`) and locked for the block; on failure what the
    block wrote (splits, vocabularies, spec) is removed, so a rerun starts clean."""
    with folder_lock(out_dir, "iarm data"):
        out = _prepare_out(out_dir, overwrite)
        try:
            yield out
        except BaseException:
            for name in [SPEC_FILE, VOCAB_DIR, *SPLITS]:
                path = out / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            raise


def _field_list(value: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    if value is None or isinstance(value, list):
        return value
    return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)


def _run_encode(job: _Job, chunks: Sequence[Chunk], pool: Optional[Pool]) -> _Written:
    total = _Written({s: 0 for s in SPLITS}, {s: 0 for s in SPLITS}, {}, 0, [])
    for w in _map_chunks(_encode_chunk, job, chunks, pool, "encode"):
        for split in w.rows:
            total.rows[split] += w.rows[split]
            total.positives[split] += w.positives[split]
        for name, n in w.max_length.items():
            total.max_length[name] = max(total.max_length.get(name, 0), n)
        total.skipped += w.skipped
        total.neutral += w.neutral
        total.skipped_examples += w.skipped_examples[: 5 - len(total.skipped_examples)]
    if not sum(total.rows.values()):
        if total.skipped:
            raise ValueError(
                f"no rows left after skipping {total.skipped} bad rows in {job.reader.source}; first: {total.skipped_examples[0]}"
            )
        raise ValueError(f"{job.reader.source}: no rows to write (every row was dropped)")
    for split in SPLITS:
        (Path(job.out_dir) / split).mkdir(exist_ok=True)
    if total.skipped:
        logger.warning(
            "skipped %d bad rows of %s; first: %s", total.skipped, job.reader.source, total.skipped_examples[:1]
        )
    return total


def preprocess(
    dataset: str,
    source: str,
    out_dir: str,
    *,
    field_set: Optional[str] = None,
    split: str = "random",
    valid_ratio: float = 0.1,
    test_ratio: float = 0.1,
    seed: int = 0,
    min_count: Optional[int] = None,
    hash_buckets: Union[None, int, Mapping[str, int]] = None,
    numeric: Optional[str] = None,
    user_fields: Union[None, str, Sequence[str]] = None,
    skip_bad_rows: bool = False,
    workers: Optional[int] = None,
    chunk_mb: float = 16.0,
    overwrite: bool = False,
    max_field_bytes: int = MAX_FIELD_BYTES,
    max_line_bytes: int = MAX_LINE_BYTES,
    schema: Any = None,
) -> FeatureSpec:
    """Preprocess a dataset's original files into npy shards, vocabularies and ``spec.json``.

    Args:
        dataset: ``"criteo"``, ``"avazu"`` or ``"movielens-1m"``.
        source: a file or a folder, plain or gzip, any iopath path: Criteo ``train.txt`` or a folder
            of ``day_N`` files (read in day order) or with ``train.txt``; Avazu ``train.csv`` or its
            folder; the MovieLens-1M folder (``users.dat``, ``movies.dat``, ``ratings.dat``).
        out_dir: output folder (created); see :mod:`iarm_torchrec.data.spec` for the layout.
        field_set: MovieLens only: ``"paper"`` (default, AutoInt's 7 fields) or ``"ids"``.
        split: ``"random"`` (seeded hash of the row index) or ``"time"`` (ordered cut).
        valid_ratio, test_ratio: shares of ``valid`` and ``test`` (``train`` gets the rest); the
            paper's test ratios are ``test_ratio=0.2`` / ``0.3``.
        seed: the random split's seed.
        min_count: a value seen fewer times in the train split maps to id 0 (default: 10 Criteo,
            5 Avazu, 1 MovieLens).
        hash_buckets: hash values into this many ids (+ id 0) instead of a vocabulary: an int for
            every field, or ``{field: buckets}`` for some; skips counting for those fields.
        numeric: ``"log1p"``, ``"standard"``, ``"minmax"``, ``"none"`` or ``"bucketize"`` (the
            numerical fields become categorical ones, after the others; default: ``log1p`` for
            Criteo, ``standard`` for MovieLens' timestamp); see :mod:`iarm_torchrec.data.numeric`.
        user_fields: the user fields of Eq. 5 (list or comma-separated); default per dataset.
        skip_bad_rows: drop and count bad rows (recorded as ``spec.options["skipped_rows"]``)
            instead of raising ``ValueError("FILE:LINE: field NAME: ...")``.
        workers: parallel processes (default: the usable CPUs).
        chunk_mb: size of a chunk (and so of an output part) in MiB of input.
        overwrite: replace an earlier output in ``out_dir``.
        max_field_bytes, max_line_bytes: a longer field or line is a bad row (default 64 KiB
            and 1 MiB).
        schema: ``tabular`` only: the schema file (see :mod:`iarm_torchrec.data.schema`); its
            relative file names start at ``source`` when given, else at the schema's folder.
            Its ``min_count``, ``hash_buckets`` and ``numeric`` (global and per field) are the
            defaults the arguments above override.

    ``out_dir`` is locked while it is written (a second preprocessing into it is refused,
    naming the owner); what a failed run wrote there is removed.

    Returns:
        the :class:`FeatureSpec`, also saved as ``out_dir/spec.json``.
    """
    limits = dict(max_field_bytes=max_field_bytes, max_line_bytes=max_line_bytes)
    reader = make_reader(dataset, source, field_set=field_set, skip_bad_rows=skip_bad_rows, schema=schema, **limits)
    defaults = {**DEFAULTS[dataset], **getattr(reader, "defaults", {})}
    min_count = defaults["min_count"] if min_count is None else int(min_count)
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    numeric = numeric or defaults["numeric"]
    if numeric not in TRANSFORMS:
        raise ValueError(f"numeric must be one of {TRANSFORMS}, got {numeric!r}")
    buckets = {**getattr(reader, "field_buckets", {}), **_buckets(hash_buckets, reader.sparse_fields)}
    splits = SplitConfig(split, valid_ratio, test_ratio, seed)
    workers = workers or _default_workers()

    chunks = reader.plan(int(chunk_mb * 2**20))
    if hasattr(reader, "prepare_split"):  # pre-split files, a time column (tabular)
        reader.prepare_split(splits, chunks)
    with _writing(out_dir, overwrite) as out:
        return _preprocess(reader, chunks, source, out, splits, buckets, min_count, numeric, user_fields, workers, chunk_mb, limits)


def _preprocess(
    reader: RowReader,
    chunks: List[Chunk],
    source: str,
    out: Path,
    splits: SplitConfig,
    buckets: Dict[str, int],
    min_count: int,
    numeric: str,
    user_fields: Union[None, str, Sequence[str]],
    workers: int,
    chunk_mb: float,
    limits: Dict[str, int],
) -> FeatureSpec:
    dataset, skip_bad_rows = reader.dataset, reader.skip_bad_rows
    vocab_dir = out / VOCAB_DIR
    lookups = field_lookups(reader.sparse_fields, buckets, vocab_dir)
    job = _Job(reader, splits, sum(c.lines for c in chunks), str(out), lookups=lookups, numeric=numeric)

    sizes: Dict[str, int] = {f: buckets[f] + 1 for f in buckets}
    with _pool(workers, len(chunks)) as pool:
        own = [_numeric_of(reader, f, numeric) for f in reader.dense_fields]
        if len(buckets) < len(reader.sparse_fields) or numeric in ("standard", "minmax") or {"standard", "minmax"} & set(own):
            counters = {f: KeyCounter() for f in reader.sparse_fields if f not in buckets}
            stats = {f: NumericStats() for f in reader.dense_fields}
            for counts in _map_chunks(_count_chunk, job, chunks, pool, "count"):
                for name, (keys, n) in counts.keys.items():
                    counters[name].add(keys, n)
                for name, s in counts.stats.items():
                    stats[name].merge(s)
            vocab_dir.mkdir()
            for name, counter in counters.items():
                vocab = Vocabulary.from_counts(*counter.result(), getattr(reader, "min_counts", {}).get(name, min_count))
                vocab.save(vocab_dir / f"{name}.npy")
                sizes[name] = vocab.size
            del counters
            job.stats = {name: s.to_dict() for name, s in stats.items()}
        written = _run_encode(job, chunks, pool)
    bucketized = numeric == "bucketize"
    spec = FeatureSpec(
        dataset=dataset,
        sparse=[
            SparseFieldSpec(f, sizes[f], f in reader.multi_hot_fields, max(written.max_length.get(f, 1), 1))
            for f in reader.sparse_fields
        ]
        + [SparseFieldSpec(f, BUCKETS) for f in reader.dense_fields if bucketized],
        dense=[] if bucketized else list(reader.dense_fields),
        user_fields=_field_list(user_fields) or list(reader.user_fields),
        rows=written.rows,
        options={
            "source": source,
            "field_set": getattr(reader, "field_set", None),
            **({"schema": reader.schema.to_dict()} if hasattr(reader, "schema") else {}),
            "numeric_fields": dict(getattr(reader, "numeric_transforms", {})),  # per-field transforms (tabular)
            **splits.to_dict(),
            "min_count": min_count,
            "hash_buckets": buckets,
            "numeric": numeric,
            "numeric_stats": job.stats,
            "bucketized": list(reader.dense_fields) if bucketized else [],
            "vocab_dir": VOCAB_DIR,
            "oov_id": OOV_ID,
            "key_scheme": KEY_SCHEME,
            "labelled": True,
            "positives": written.positives,
            "skip_bad_rows": skip_bad_rows,
            "skipped_rows": written.skipped,
            "skipped_examples": written.skipped_examples,
            "chunk_mb": chunk_mb,
            "chunks": len(chunks),
            "workers": workers,
            **limits,
        },
    )
    spec.save(out)
    return spec


def _buckets(hash_buckets: Union[None, int, Mapping[str, int]], fields: Sequence[str]) -> Dict[str, int]:
    if hash_buckets is None:
        return {}
    if isinstance(hash_buckets, Mapping):
        unknown = [f for f in hash_buckets if f not in fields]
        if unknown:
            raise ValueError(f"hash_buckets names unknown fields {unknown}; fields are {list(fields)}")
        buckets = {f: int(n) for f, n in hash_buckets.items()}
    else:
        buckets = {f: int(hash_buckets) for f in fields}
    bad = {f: n for f, n in buckets.items() if n < 1}
    if bad:
        raise ValueError(f"hash_buckets must be >= 1, got {bad}")
    return buckets


ENCODE_CHUNKS_PER_WORKER = 8
""":func:`encode` starts worker processes only for inputs of at least this many chunks per worker."""


def encode(
    source: str,
    data_dir: str,
    out_dir: str,
    *,
    labelled: bool = True,
    split_name: str = "test",
    skip_bad_rows: bool = False,
    workers: Optional[int] = None,
    chunk_mb: float = 16.0,
    overwrite: bool = False,
    keep_neutral: bool = False,
) -> FeatureSpec:
    """Encode a new raw file with an existing dataset's vocabularies and numeric statistics.

    Every row goes, in file order, to ``out_dir/<split_name>/part-*`` (with a ``spec.json`` whose
    ``rows`` counts only that split), so ``iarm predict`` reads it like any split. For an
    unlabelled file (``labelled=False``, e.g. Kaggle Criteo's ``test.txt``) labels are written
    as 0 and ``spec.options["labelled"]`` is ``False``.

    Args:
        source: the raw file (or folder), as for :func:`preprocess`.
        data_dir: a folder written by :func:`preprocess` (its ``spec.json`` and ``vocab/``).
        out_dir: where to write the encoded rows.
        labelled, split_name, skip_bad_rows, workers, chunk_mb, overwrite: as their names say
            (see :func:`preprocess`).
        keep_neutral: keep MovieLens' rating-3 rows (which training drops), so that every
            input row is encoded (``iarm predict`` scores them all).
    """
    if split_name not in SPLITS:
        raise ValueError(f"split_name must be one of {SPLITS}, got {split_name!r}")
    base = FeatureSpec.load(data_dir)
    options = base.options
    reader = make_reader(
        base.dataset,
        source,
        field_set=options.get("field_set"),
        labelled=labelled,
        skip_bad_rows=skip_bad_rows,
        keep_neutral=keep_neutral,
        schema=options.get("schema") if base.dataset == "tabular" else None,  # built-ins: the shipped schema
        explicit=base.dataset == "tabular",
        **{k: options[k] for k in ("max_field_bytes", "max_line_bytes") if k in options},
    )
    buckets = options.get("hash_buckets", {})
    vocab_dir = Path(data_dir).resolve() / options.get("vocab_dir", VOCAB_DIR)
    lookups = field_lookups(reader.sparse_fields, buckets, vocab_dir)
    missing = [p for kind, p in lookups.values() if kind == "vocab" and not Path(str(p)).is_file()]
    if missing:
        raise FileNotFoundError(f"{data_dir}: vocabularies {missing} are missing; preprocess the dataset again")
    chunks = reader.plan(int(chunk_mb * 2**20))
    workers = workers or _default_workers()
    # a spawned worker imports torch and the package before its first row (10-20 s on a busy
    # 2-core machine), while a 16 MB chunk encodes in under a second: fewer chunks than
    # ENCODE_CHUNKS_PER_WORKER a worker go to threads of this process instead (iarm predict on 200k
    # Criteo rows: 19 s of encoding in spawned workers, 1.8 s inline)
    pool_of = _threads if len(chunks) < ENCODE_CHUNKS_PER_WORKER * workers else _pool
    with _writing(out_dir, overwrite) as out:
        job = _Job(reader, None, 0, str(out), split_name, lookups, options["numeric"], options.get("numeric_stats", {}))
        with pool_of(workers, len(chunks)) as pool:
            written = _run_encode(job, chunks, pool)
        return _encoded_spec(base, written, options, source, data_dir, vocab_dir, labelled, split_name, skip_bad_rows, out)


def _encoded_spec(
    base: FeatureSpec,
    written: _Written,
    options: Dict[str, Any],
    source: str,
    data_dir: str,
    vocab_dir: Path,
    labelled: bool,
    split_name: str,
    skip_bad_rows: bool,
    out: Path,
) -> FeatureSpec:
    spec = FeatureSpec(
        dataset=base.dataset,
        sparse=[
            SparseFieldSpec(f.name, f.vocab_size, f.multi_hot, max(f.max_length, written.max_length.get(f.name, 1)))
            for f in base.sparse
        ],
        dense=list(base.dense),
        user_fields=list(base.user_fields),
        rows={split_name: written.rows[split_name]},
        options={
            **options,
            "source": source,
            "encoded_with": str(Path(data_dir).resolve()),
            "vocab_dir": str(vocab_dir),
            "labelled": labelled,
            "positives": {split_name: written.positives[split_name]} if labelled else {},
            "skip_bad_rows": skip_bad_rows,
            "skipped_rows": written.skipped,
            "skipped_examples": written.skipped_examples,
            "neutral_rows": written.neutral,
        },
    )
    spec.save(out)
    return spec
