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
field, bytes that are not text, a line longer than ``max_line_bytes`` (1 MiB) or a field longer
than ``max_field_bytes`` (64 KiB) raises ``ValueError("FILE:LINE: field NAME: 'value' ...")``,
or, with ``skip_bad_rows=True``, is dropped and counted (:class:`RowChecker`). A damaged gzip
file raises ``ValueError("FILE: damaged gzip file ...")``.

Memory per chunk is bounded by the chunk's bytes, not by its longest field: a chunk's tokens are
a fixed-width bytes array only while that costs at most a few times the chunk's size, else an
array of ``bytes`` objects (slower, but as large as the data).
"""

import abc
import contextlib
import gzip
import itertools
import zlib
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from iopath.common.file_io import PathManager

PATHS = PathManager()
MAX_EXAMPLES = 5  # skipped-row messages kept for the report
_GZIP_MAGIC = b"\x1f\x8b"
MAX_FIELD_BYTES = 64 << 10
"""Default longest field (``max_field_bytes``): longer ones are bad rows."""
MAX_LINE_BYTES = 1 << 20
"""Default longest line (``max_line_bytes``): longer ones are bad rows."""
_FIXED_WIDTH_FACTOR = 8  # a fixed-width token array may cost this many times the chunk's bytes
_SHOWN = 60  # characters of a bad value shown in a message


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
    """Turn a damaged (e.g. truncated) gzip stream's error into one naming ``path``."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path}: damaged gzip file ({error}); is it truncated? Download or copy it again") from None


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
        with open_file(path) as f, naming(path):
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
                with naming(c.path):
                    stream.read(c.start)  # the header line
            assert stream is not None
            with naming(c.path):
                data = stream.read(c.end - c.start)
            yield data
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
        neutral: rows kept although training's protocol drops them (MovieLens' rating 3, when
            scoring every row).
        split_codes: ``uint8 [n]`` each row's split (index in ``SPLITS``) when the reader decides
            it (pre-split files, a time column), else ``None`` (the split config decides).
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
    neutral: int = 0
    split_codes: Optional[np.ndarray] = None

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
            neutral=self.neutral,
            split_codes=None if self.split_codes is None else self.split_codes[keep],
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
        self.flag(bad, lambda i: f"field {name}: {show_token(tokens[i])} {what}")


def show_token(token: bytes) -> str:
    """A value for a message: text when ASCII, else a bytes literal; long ones cut, with their size."""
    token = bytes(token)
    if len(token) > _SHOWN:
        return show_token(token[:_SHOWN])[:-1] + f"...' ({len(token):,} bytes)"
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
    max_field: int = MAX_FIELD_BYTES,
    max_line: int = MAX_LINE_BYTES,
) -> Table:
    """Cut a chunk's lines at ``sep`` into ``n_columns`` tokens each (vectorised).

    Lines with another column count (blank lines included) are reported as
    ``FILE:LINE: expected N SEP-separated columns (COLUMNS), found M``; lines longer than
    ``max_line`` bytes and fields longer than ``max_field`` bytes as bad rows too; with
    ``ascii_only``, non-ASCII bytes as ``field NAME: b'...' is not ASCII text (undecodable
    bytes)``, where ``columns`` names the columns, comma-separated.
    """
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    shown_sep = sep.decode()
    names = [c.strip() for c in columns.split(",")]
    if not data.endswith(b"\n"):
        data += b"\n"
    checker = RowChecker(chunk.path, np.zeros(0, dtype=np.int64), skip)
    if len(sep) > 1:
        free = [bytes([b]) for b in (0x1F, 0x1E, 0x1D, 0x1C, 0x00) if bytes([b]) not in data]
        if not free:  # every candidate occurs (binary data): lines holding 0x1F are bad, then it is free
            data, checker = _drop_lines(data, chunk, checker, lambda pieces: np.array([b"\x1f" in p for p in pieces]),
                                        lambda i, pieces: "holds the control byte 0x1f: not a text line (binary data?)")
            free = [b"\x1f"]
        data, sep = data.replace(sep, free[0]), free[0]
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    found = np.diff(np.searchsorted(np.flatnonzero(arr == sep[0]), ends), prepend=0) + 1
    del arr
    lengths = np.diff(ends, prepend=-1) - 1
    lines = chunk.first_line + np.arange(len(ends), dtype=np.int64)
    if checker.skipped and len(checker.lines) == 0 and data == b"\n":  # every line was dropped above
        empty = np.zeros(0, dtype=np.int64)
        return Table(np.zeros((0, n_columns), dtype="S1"), empty, empty, checker)
    if len(checker.lines):  # lines were dropped above: number the rest as they were
        lines = checker.lines
    rows = chunk.first_row + (lines - chunk.first_line)
    too_long = lengths > max_line
    wrong = (found != n_columns) & ~too_long
    checker.lines = lines
    checker.bad = np.zeros(len(lines), dtype=bool)
    if too_long.any():
        checker.flag(too_long, lambda i: f"line of {lengths[i]:,} bytes is longer than the limit of {max_line:,} bytes (max_line_bytes)")
    if wrong.any():
        shown = "tab" if shown_sep == "\t" else repr(shown_sep)
        checker.flag(wrong, lambda i: f"expected {n_columns} {shown}-separated columns ({columns}), found {found[i]}")
    drop = too_long | wrong
    if drop.any():
        pieces = data.split(b"\n")[:-1]
        data = b"\n".join(itertools.compress(pieces, ~drop)) + b"\n"
        lines, rows, lengths = lines[~drop], rows[~drop], lengths[~drop]
    skipped, examples = checker.skipped, checker.examples
    checker = RowChecker(chunk.path, lines, skip)
    checker.skipped, checker.examples = skipped, examples
    tokens = _tokens(data, sep, len(lines), n_columns, int(lengths.max(initial=0)), max_field, checker, names)
    table = Table(tokens, lines, rows, checker)
    if ascii_only and not data.isascii():
        for j in range(n_columns):
            col = tokens[:, j]
            if col.dtype == object:
                bad = np.fromiter((not t.isascii() for t in col), dtype=bool, count=len(col))
            else:
                bad = (np.ascontiguousarray(col).view(np.uint8).reshape(len(col), -1) > 127).any(axis=1)
            checker.flag_field(bad, names[j] if j < len(names) else f"#{j + 1}", col, "is not ASCII text (undecodable bytes)")
    return table


def _drop_lines(
    data: bytes, chunk: Chunk, checker: RowChecker, is_bad: Callable[[List[bytes]], np.ndarray], message: Callable[[int, List[bytes]], str]
) -> Tuple[bytes, RowChecker]:
    """Flag and remove the lines ``is_bad`` picks; the checker keeps the remaining lines' numbers."""
    pieces = data.split(b"\n")[:-1]
    bad = is_bad(pieces).astype(bool)
    lines = chunk.first_line + np.arange(len(pieces), dtype=np.int64)
    flagger = RowChecker(chunk.path, lines, checker.skip)
    flagger.flag(bad, lambda i: message(i, pieces))
    kept = RowChecker(chunk.path, lines[~bad], checker.skip)
    kept.skipped, kept.examples = flagger.skipped, flagger.examples
    return b"\n".join(itertools.compress(pieces, ~bad)) + b"\n", kept


def _tokens(
    data: bytes, sep: bytes, n: int, n_columns: int, longest_line: int, max_field: int, checker: RowChecker, names: List[str]
) -> np.ndarray:
    """The ``[n, n_columns]`` token array of ``data`` (lines already checked): fixed-width bytes
    while that stays within a few times the data's size, else ``bytes`` objects. Fields longer
    than ``max_field`` are flagged (and emptied: their row is bad)."""
    if not n:
        return np.zeros((0, n_columns), dtype="S1")
    pieces = data[:-1].replace(b"\n", sep).split(sep)
    budget = _FIXED_WIDTH_FACTOR * len(data) + (1 << 20)
    if longest_line <= max_field and n * n_columns * max(longest_line, 1) <= budget:
        return np.array(pieces).reshape(n, n_columns)
    sizes = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)).reshape(n, n_columns)
    long = sizes > max_field
    if long.any():
        for j in sorted(np.flatnonzero(long.any(axis=0)), key=lambda j: int(np.argmax(long[:, j]))):  # earliest row first
            column = np.empty(n, dtype=object)
            column[:] = pieces[j::n_columns]
            name = names[j] if j < len(names) else f"#{j + 1}"
            checker.flag_field(long[:, j], name, column, f"is longer than the limit of {max_field:,} bytes (max_field_bytes)")
        for index in np.flatnonzero(long.reshape(-1)):
            pieces[index] = b""
        sizes[long] = 0
    if n * n_columns * max(int(sizes.max()), 1) <= budget:
        return np.array(pieces).reshape(n, n_columns)
    tokens = np.empty(len(pieces), dtype=object)
    tokens[:] = pieces
    return tokens.reshape(n, n_columns)


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

    def __init__(
        self,
        source: str,
        *,
        labelled: bool = True,
        skip_bad_rows: bool = False,
        max_field_bytes: int = MAX_FIELD_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.source = source
        self.labelled = labelled
        self.skip_bad_rows = skip_bad_rows
        if max_field_bytes < 1 or max_line_bytes < 1:
            raise ValueError(f"max_field_bytes and max_line_bytes must be positive, got {max_field_bytes}, {max_line_bytes}")
        self.max_field_bytes = int(max_field_bytes)
        self.max_line_bytes = int(max_line_bytes)

    @property
    def limits(self) -> Dict[str, Any]:
        """The length limits, as :func:`split_table`'s keywords."""
        return {"max_field": self.max_field_bytes, "max_line": self.max_line_bytes}

    @property
    def one_hot_fields(self) -> List[str]:
        return [f for f in self.sparse_fields if f not in self.multi_hot_fields]

    @abc.abstractmethod
    def plan(self, chunk_bytes: int) -> List[Chunk]:
        """The source's chunks, in order."""

    @abc.abstractmethod
    def parse(self, chunk: Chunk, data: Optional[bytes]) -> RawRows:
        """One chunk's rows, bad rows raised or dropped; ``data`` is the chunk's bytes when fed."""
