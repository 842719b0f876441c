"""What every reader of an original format shares: files through iopath, chunks, rows, bad-row reports.

A source (one or more text files, plain or gzip) is cut into *chunks*: byte ranges that start and
end at line boundaries, each parsed on its own (in a worker process when preprocessing runs in
parallel). A chunk parses into :class:`RawRows`: labels, raw numeric values, and categorical
values as ``uint64`` keys (:func:`iarm_torchrec.data.vocab.token_keys`), with every row's line
number (for error messages) and row index (for the split).

Chunk boundaries depend only on the decompressed bytes, so a gzip file and its plain twin give
the same chunks, rows and output. Plain files are read by each worker at its own byte range
(``seek``); gzip files cannot seek, so the parent decompresses them once per pass and hands each
chunk's bytes to a worker.

Bad input never passes silently: a row with the wrong column count, a non-integer in an integer
field or bytes that are not text raises ``ValueError("FILE:LINE: field NAME: 'value' ...")``, or,
with ``skip_bad_rows=True``, is dropped and counted (:class:`RowChecker`).
"""

import abc
import gzip
import itertools
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from iopath.common.file_io import PathManager

PATHS = PathManager()
MAX_EXAMPLES = 5  # skipped-row messages kept for the report
_GZIP_MAGIC = b"\x1f\x8b"


def open_file(path: str) -> BinaryIO:
    """Open a source file for binary reading through iopath, decompressing it if it is gzip."""
    if not PATHS.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if PATHS.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder, expected a file")
    f = PATHS.open(path, "rb")
    magic = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f, mode="rb") if magic == _GZIP_MAGIC else f


def is_gzip(path: str) -> bool:
    with PATHS.open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def find_file(folder: str, names: Sequence[str]) -> str:
    """The first of ``names`` (each also tried with ``.gz``) that exists in ``folder``."""
    for name in names:
        for candidate in (name, name + ".gz"):
            path = f"{folder.rstrip('/')}/{candidate}"
            if PATHS.isfile(path):
                return path
    raise FileNotFoundError(f"{folder}: none of {list(names)} (or .gz) found in this folder")


@dataclass(frozen=True)
class Chunk:
    """A run of whole lines of one source file.

    Attributes:
        index: position in the plan; names the output part (``part-{index:05d}``).
        path: the file.
        start, end: byte range in the (decompressed) file.
        gzip: whether the file is gzip (then the parent feeds the bytes).
        first_line: 1-based line number in ``path`` of the chunk's first line.
        first_row: 0-based index of that line among all data lines of the source (all files).
        lines: number of lines in the chunk.
    """

    index: int
    path: str
    start: int
    end: int
    gzip: bool
    first_line: int
    first_row: int
    lines: int


def plan_chunks(paths: Sequence[str], chunk_bytes: int, header: bool) -> List[Chunk]:
    """Cut files into chunks of about ``chunk_bytes`` (whole lines), counting lines in one read.

    Chunk ``k`` of a file ends with the line holding byte ``start + (k+1) * chunk_bytes - 1``.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    chunks: List[Chunk] = []
    row = 0
    for path in paths:
        gz = is_gzip(path)
        with open_file(path) as f:
            head = f.readline() if header else b""
            pos = first = len(head)
            line = 2 if header else 1
            before = len(chunks)
            while True:
                target = first + ((pos - first) // chunk_bytes + 1) * chunk_bytes
                piece = f.read(target - 1 - pos) + f.readline()
                if not piece:
                    break
                n = piece.count(b"\n") + (not piece.endswith(b"\n"))
                chunks.append(Chunk(len(chunks), path, pos, pos + len(piece), gz, line, row, n))
                pos, line, row = pos + len(piece), line + n, row + n
        if len(chunks) == before:
            raise ValueError(f"{path}: empty file (no data rows{' after the header line' if header else ''})")
    return chunks


def chunk_payloads(chunks: Sequence[Chunk]) -> Iterator[Optional[bytes]]:
    """For each chunk: its bytes when it is gzip (decompressed here, in order), else ``None``."""
    stream: Optional[BinaryIO] = None
    path: Optional[str] = None
    try:
        for c in chunks:
            if not c.gzip:
                yield None
                continue
            if c.path != path:
                if stream is not None:
                    stream.close()
                stream, path = open_file(c.path), c.path
                stream.read(c.start)  # the header line
            assert stream is not None
            yield stream.read(c.end - c.start)
    finally:
        if stream is not None:
            stream.close()


def read_chunk(chunk: Chunk, data: Optional[bytes]) -> bytes:
    """A chunk's bytes: ``data`` when the parent fed them, else read from the file's byte range."""
    if data is not None:
        return data
    with PATHS.open(chunk.path, "rb") as f:
        f.seek(chunk.start)
        return f.read(chunk.end - chunk.start)


@dataclass
class RawRows:
    """Parsed rows of one chunk (or of a whole in-memory dataset), before vocabularies.

    Attributes:
        lines: ``int64 [n]`` line numbers (of the main file) for messages.
        rows: ``int64 [n]`` row indices (the random split hashes them).
        labels: ``float32 [n]`` 0/1 clicks, ``None`` for an unlabelled file.
        dense: ``float64 [n, N]`` raw numeric values, NaN where missing.
        sparse: ``uint64 [n, F]`` keys of the one-hot fields, 0 where missing.
        multi_hot: field -> (``uint64 [nnz]`` keys, ``int32 [n]`` lengths).
        rank: ``int64 [n]`` time rank for the time split when not the row index (MovieLens).
        ranked: how many rows ``rank`` ranks (the time split's total), with ``rank``.
        skipped: bad rows dropped (``skip_bad_rows=True``), with the first messages.
    """

    lines: np.ndarray
    rows: np.ndarray
    labels: Optional[np.ndarray]
    dense: np.ndarray
    sparse: np.ndarray
    multi_hot: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    rank: Optional[np.ndarray] = None
    ranked: Optional[int] = None
    skipped: int = 0
    skipped_examples: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep: np.ndarray) -> "RawRows":
        """The rows where the boolean ``keep`` is true (same skip record)."""
        multi = {}
        for name, (values, lengths) in self.multi_hot.items():
            multi[name] = (values[np.repeat(keep, lengths)], lengths[keep])
        return RawRows(
            lines=self.lines[keep],
            rows=self.rows[keep],
            labels=None if self.labels is None else self.labels[keep],
            dense=self.dense[keep],
            sparse=self.sparse[keep],
            multi_hot=multi,
            rank=None if self.rank is None else self.rank[keep],
            ranked=self.ranked,
            skipped=self.skipped,
            skipped_examples=self.skipped_examples,
        )


class RowChecker:
    """Collects a chunk's bad rows: raises on the first one, or (``skip=True``) marks and counts them."""

    def __init__(self, path: str, lines: np.ndarray, skip: bool) -> None:
        self.path, self.lines, self.skip = path, lines, skip
        self.bad = np.zeros(len(lines), dtype=bool)
        self.skipped = 0
        self.examples: List[str] = []

    def flag(self, bad: np.ndarray, message: Callable[[int], str]) -> None:
        """Report rows where ``bad`` is true; ``message(i)`` describes row ``i`` (after ``FILE:LINE: ``)."""
        if not bad.any():
            return
        first = int(np.argmax(bad))
        text = f"{self.path}:{self.lines[first]}: {message(first)}"
        if not self.skip:
            raise ValueError(text)
        new = bad & ~self.bad
        self.skipped += int(new.sum())
        self.bad |= bad
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)

    def flag_field(self, bad: np.ndarray, name: str, tokens: np.ndarray, what: str) -> None:
        """Report rows whose token of field ``name`` is bad: ``field NAME: 'value' WHAT``."""
        self.flag(bad, lambda i: f"field {name}: {_show(tokens[i])} {what}")


def _show(token: bytes) -> str:
    token = bytes(token)
    return repr(token.decode("latin-1")) if token.isascii() else repr(token)


@dataclass
class Table:
    """A chunk's lines cut into columns: ``tokens`` is a bytes array ``[n, C]``."""

    tokens: np.ndarray
    lines: np.ndarray
    rows: np.ndarray
    checker: RowChecker

    def finish(
        self,
        labels: Optional[np.ndarray],
        dense: np.ndarray,
        sparse: np.ndarray,
        multi_hot: Optional[Dict[str, Tuple[np.ndarray, np.ndarray]]] = None,
    ) -> "RawRows":
        """The parsed columns as :class:`RawRows`, without the rows the checker flagged."""
        rows = RawRows(self.lines, self.rows, labels, dense, sparse, multi_hot or {})
        rows.skipped, rows.skipped_examples = self.checker.skipped, self.checker.examples
        return rows.select(~self.checker.bad) if self.checker.bad.any() else rows


def split_table(
    data: bytes,
    chunk: Chunk,
    sep: bytes,
    columns: str,
    n_columns: int,
    skip: bool,
    ascii_only: bool = True,
) -> Table:
    """Cut a chunk's lines at ``sep`` into ``n_columns`` tokens each (vectorised).

    Lines with another column count (blank lines included) are reported as
    ``FILE:LINE: expected N SEP-separated columns (COLUMNS), found M``; with ``ascii_only``,
    non-ASCII bytes as ``field NAME: b'...' is not ASCII text (undecodable bytes)``, where
    ``columns`` names the columns, comma-separated.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    shown_sep = sep.decode()
    if len(sep) > 1:
        placeholder = next(bytes([b]) for b in (0x1F, 0x1E, 0x1D, 0x1C, 0x00) if bytes([b]) not in data)
        data, sep = data.replace(sep, placeholder), placeholder
    if not data.endswith(b"\n"):
        data += b"\n"
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    found = np.diff(np.searchsorted(np.flatnonzero(arr == sep[0]), ends), prepend=0) + 1
    del arr
    lines = chunk.first_line + np.arange(len(ends), dtype=np.int64)
    rows = chunk.first_row + np.arange(len(ends), dtype=np.int64)
    wrong = found != n_columns
    if wrong.any():
        shown = "tab" if shown_sep == "\t" else repr(shown_sep)
        checker = RowChecker(chunk.path, lines, skip)
        checker.flag(wrong, lambda i: f"expected {n_columns} {shown}-separated columns ({columns}), found {found[i]}")
        pieces = data.split(b"\n")[:-1]
        data = b"\n".join(itertools.compress(pieces, ~wrong)) + b"\n"
        skipped, examples = checker.skipped, checker.examples
        lines, rows = lines[~wrong], rows[~wrong]
    else:
        skipped, examples = 0, []
    if len(lines):
        tokens = np.array(data[:-1].replace(b"\n", sep).split(sep)).reshape(len(lines), n_columns)
    else:
        tokens = np.zeros((0, n_columns), dtype="S1")
    checker = RowChecker(chunk.path, lines, skip)
    checker.skipped, checker.examples = skipped, examples
    table = Table(tokens, lines, rows, checker)
    if ascii_only and not data.isascii():
        names = [c.strip() for c in columns.split(",")]
        for j in range(n_columns):
            col = tokens[:, j]
            bad = (np.ascontiguousarray(col).view(np.uint8).reshape(len(col), -1) > 127).any(axis=1)
            checker.flag_field(bad, names[j] if j < len(names) else f"#{j + 1}", col, "is not ASCII text (undecodable bytes)")
    return table


def parse_labels(table: Table, col: int, name: str = "label") -> np.ndarray:
    """A 0/1 column -> ``float32 [n]``; anything else is a bad row."""
    tokens = table.tokens[:, col]
    one, zero = tokens == b"1", tokens == b"0"
    table.checker.flag_field(~(one | zero), name, tokens, "is not 0 or 1")
    return one.astype(np.float32)


def parse_ints(table: Table, col: int, name: str, allow_missing: bool = True) -> np.ndarray:
    """An integer column -> ``float64 [n]``, NaN where empty (when ``allow_missing``)."""
    tokens = table.tokens[:, col]
    missing = tokens == b""
    try:
        values = np.where(missing, b"0", tokens).astype(np.int64)
    except (ValueError, OverflowError):
        bad = np.array([not _is_int64(t) for t in tokens]) & ~missing
        table.checker.flag_field(bad, name, tokens, "is not an integer")
        values = np.where(missing | bad, b"0", tokens).astype(np.int64)
    if not allow_missing:
        table.checker.flag_field(missing, name, tokens, "is missing (an integer is required)")
    out = values.astype(np.float64)
    out[missing] = np.nan
    return out


def _is_int64(token: bytes) -> bool:
    try:
        return -(2**63) <= int(token) < 2**63 and b"_" not in token
    except ValueError:
        return False


class RowReader(abc.ABC):
    """A dataset's reader: its fields, how its source cuts into chunks, and how a chunk parses.

    Subclasses set the class attributes and implement :meth:`plan` and :meth:`parse`; instances
    are pickled to worker processes, so they hold only plain data.

    Attributes:
        dataset: the dataset's name (``spec.dataset``).
        sparse_fields: categorical fields in spec order; those in ``multi_hot_fields`` are multi-hot.
        dense_fields: numerical fields.
        user_fields: the default user fields (Eq. 5).
        time_ordered: whether the file order is time order (time split by row index).
    """

    dataset: str
    sparse_fields: List[str]
    multi_hot_fields: List[str] = []
    dense_fields: List[str] = []
    user_fields: List[str] = []
    time_ordered: bool = True

    def __init__(self, source: str, *, labelled: bool = True, skip_bad_rows: bool = False) -> None:
        self.source = source
        self.labelled = labelled
        self.skip_bad_rows = skip_bad_rows

    @property
    def one_hot_fields(self) -> List[str]:
        return [f for f in self.sparse_fields if f not in self.multi_hot_fields]

    @abc.abstractmethod
    def plan(self, chunk_bytes: int) -> List[Chunk]:
        """The source's chunks, in order."""

    @abc.abstractmethod
    def parse(self, chunk: Chunk, data: Optional[bytes]) -> RawRows:
        """One chunk's rows, bad rows raised or dropped; ``data`` is the chunk's bytes when fed."""
