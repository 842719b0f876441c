"""Rows of any CSV, TSV or Parquet table described by a schema (:mod:`iarm_torchrec.data.schema`).

Reading is Apache Arrow's (``pyarrow``), one chunk at a time, so memory stays bounded whatever the
file size and the two-pass preprocessing (:mod:`iarm_torchrec.data.preprocess`: vocabularies,
numeric transforms, splits, bad rows, workers, the cache) is the same as for MovieLens' reader;
the built-in Criteo and Avazu are read by this reader too, from their shipped schemas
(:mod:`iarm_torchrec.data.builtin`):

* csv/tsv (plain or gzip): the file is cut into chunks of whole lines (:func:`~iarm_torchrec.data.rows.plan_chunks`),
  each parsed by ``pyarrow.csv`` with every used column as bytes; quoted fields may hold the
  delimiter but not a line break (that is an error naming the line, never a shifted row);
* parquet: one chunk per row group, reading only the columns the schema uses.

Categorical values become the same ``uint64`` keys as everywhere else (:func:`~iarm_torchrec.data.vocab.token_keys`,
computed here straight from Arrow's buffers), so a Criteo schema gives the built-in Criteo
reader's shards bit for bit. Numbers of a Parquet column are taken as they are; in a text column
they must parse as finite numbers (empty: missing), and text must be UTF-8 (after ``encoding``);
lines longer than ``max_line_bytes`` and fields longer than ``max_field_bytes`` are bad rows. A bad row raises ``FILE:LINE: field NAME: ...`` (Parquet:
``FILE: row group G, row R: field NAME: ...``) or, with ``skip_bad_rows``, is dropped and counted.
"""

import glob
import io
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from iarm_torchrec.data.rows import PATHS, Chunk, RawRows, RowChecker, RowReader, naming, open_file, plan_chunks, read_chunk
from iarm_torchrec.data.rows import show_token
from iarm_torchrec.data.schema import FieldSchema, TabularSchema, TimeSource, check_header, load_schema, parse_schema
from iarm_torchrec.data.schema import schema_from_dict
from iarm_torchrec.data.times import part_keys, time_seconds
from iarm_torchrec.data.vocab import token_keys

_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(\S+)\s*$")
_OPS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal}


def as_schema(schema: Union[str, os.PathLike, dict, TabularSchema], base_dir: Optional[str] = None) -> TabularSchema:
    """A schema from a file path, a YAML-like mapping, a normalised dict (``to_dict``) or itself."""
    if isinstance(schema, TabularSchema):
        return schema
    if isinstance(schema, dict):
        if "base_dir" in schema:  # the normalised form kept in spec.json
            return schema_from_dict(schema)
        return parse_schema(schema, "schema", base_dir or ".")
    return load_schema(schema, base_dir)


def schema_files(schema: TabularSchema, base_dir: Optional[str] = None) -> List[Tuple[str, Optional[str]]]:
    """``(file, split or None)`` of every file the schema names, globs expanded in name order."""
    base = base_dir or schema.base_dir
    out: List[Tuple[str, Optional[str]]] = []
    groups = [(None, schema.files)] if schema.files else [(s, schema.splits[s]) for s in ("train", "valid", "test") if s in schema.splits]
    if not groups:
        raise ValueError(f"schema {schema.name!r} names no files (files or splits); give the input file")
    for split, patterns in groups:
        for pattern in patterns:
            path = pattern if os.path.isabs(pattern) or "://" in pattern else os.path.join(base, pattern)
            found = sorted(glob.glob(path)) if any(ch in pattern for ch in "*?[") else [path]
            if not found:
                raise FileNotFoundError(f"{path}: no file matches (schema {'splits.' + split if split else 'files'})")
            out += [(p, split) for p in found]
    return out


def arrow_keys(array) -> np.ndarray:  # type: ignore[no-untyped-def]
    """An Arrow array (any type; nulls are missing) -> ``uint64`` keys as :func:`token_keys` gives
    for its values' bytes (numbers as their decimal text)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_large_binary(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.binary())
    if not (pa.types.is_binary(array.type) or pa.types.is_string(array.type)):
        array = pc.cast(array, pa.string())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[array.offset : array.offset + n + 1]
    lengths = np.diff(offsets)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, dtype=np.uint8)
    padded = np.concatenate([data[: offsets[-1]], np.zeros(8, dtype=np.uint8)])
    idx = offsets[:-1, None].astype(np.int64) + np.arange(8)
    idx = np.minimum(idx, len(padded) - 1)
    gathered = padded[idx]
    gathered[np.arange(8) >= lengths[:, None]] = 0
    keys = np.ascontiguousarray(gathered).view("<u8").reshape(n).astype(np.uint64)
    long = lengths > 8
    if long.any():
        which = np.flatnonzero(long)
        tokens = np.empty(len(which), dtype=object)
        tokens[:] = [bytes(data[offsets[i] : offsets[i + 1]]) for i in which]
        keys[which] = token_keys(tokens)
    if array.null_count:
        keys[np.asarray(array.is_null())] = 0
    return keys


def _byte_lengths(array) -> Optional[np.ndarray]:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    if not (pa.types.is_binary(array.type) or pa.types.is_string(array.type)) or len(array) == 0:
        return None
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32)[array.offset : array.offset + len(array) + 1]
    return np.diff(offsets)


def _shown(value: object) -> str:
    if isinstance(value, bytes):
        return show_token(value)
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _is_utf8(value: Optional[bytes]) -> bool:
    try:
        value is None or value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _first_lone_carriage_return(raw: bytes) -> Optional[int]:
    """The 0-based line of ``raw``'s first ``\\r`` that does not start a ``\\r\\n``, or ``None``.

    >>> _first_lone_carriage_return(b"a,b\\r\\nc\\r,d\\n"), _first_lone_carriage_return(b"a\\r\\n")
    (1, None)
    """
    at = raw.find(b"\r")
    while at != -1 and raw[at + 1 : at + 2] == b"\n":
        at = raw.find(b"\r", at + 1)
    return None if at == -1 else raw.count(b"\n", 0, at)


def _line_lengths(raw: bytes, lines: int) -> np.ndarray:
    """The byte length of each of a chunk's ``lines`` lines, without its ``\\n`` or ``\\r\\n``."""
    arr = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(ends) < lines:  # the file's last line has no line break
        ends = np.append(ends, len(arr))
    lengths = np.diff(ends, prepend=-1) - 1
    before = ends - 1
    crlf = (before >= 0) & (arr[np.clip(before, 0, None)] == 13) if len(arr) else np.zeros(len(ends), dtype=bool)
    return (lengths - (crlf & (lengths > 0)))[:lines]


def arrow_numbers(column) -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """A column -> (float64 values, NaN where missing; whether each is a number or missing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        return np.where(np.asarray(column.is_null()), np.nan, values) if column.null_count else values, np.ones(n, dtype=bool)
    if not (pa.types.is_binary(column.type) or pa.types.is_string(column.type)):
        raise ValueError(f"column of type {column.type} is not numeric")
    lengths = _byte_lengths(column)
    missing = (lengths == 0) if lengths is not None else np.zeros(n, dtype=bool)
    if column.null_count:
        missing |= np.asarray(column.is_null())
    text = pc.if_else(pa.array(missing), pa.scalar("0", pa.binary()), column.cast(pa.binary()))
    try:
        values = np.array(pc.cast(text.cast(pa.string()), pa.float64()).to_numpy(zero_copy_only=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = np.zeros(n)
        for i, v in enumerate(text.to_pylist()):
            try:
                values[i] = float(v)
            except ValueError:
                values[i] = np.nan
    ok = np.isfinite(values)  # "nan" and "inf" in a text column are not numbers: a missing value is empty
    values[missing] = np.nan
    values[~ok] = np.nan
    return values, ok


class _ParquetChecker(RowChecker):
    """:class:`RowChecker` whose messages say ``FILE: row group G, row R`` (R: the row in the file, 1-based)."""

    def __init__(self, path: str, group: int, lines: np.ndarray, skip: bool) -> None:
        super().__init__(path, lines, skip)
        self.group = group

    def flag(self, bad: np.ndarray, message) -> None:  # type: ignore[no-untyped-def]
        if not bad.any():
            return
        first = int(np.argmax(bad))
        text = f"{self.path}: row group {self.group}, row {self.lines[first]}: {message(first)}"
        if not self.skip:
            raise ValueError(text)
        self.skipped += int((bad & ~self.bad).sum())
        self.bad |= bad
        if len(self.examples) < 5:
            self.examples.append(text)


class TabularReader(RowReader):
    """Rows of the files a :class:`~iarm_torchrec.data.schema.TabularSchema` describes.

    Args:
        source: where the schema's relative file names start (``None``: the schema's folder), or,
            when ``files`` is given or for :func:`~iarm_torchrec.data.preprocess.encode`, the file
            (or glob) to read instead of the schema's files.
        schema: a schema file, mapping or :class:`TabularSchema`.
        labelled: ``False`` for rows without the label column (scoring).
        keep_neutral: keep rows that a label rule drops (labelled 0, counted as ``neutral``).
        explicit: read ``source`` itself (a file or glob) instead of the schema's files.
        paths: read these files, in this order, instead (the built-in datasets' folder rules,
            :mod:`iarm_torchrec.data.builtin`).
        dataset: the name recorded as ``spec.dataset`` (a built-in dataset's, else ``tabular``).
    """

    dataset = "tabular"

    def __init__(
        self,
        source: Optional[str],
        *,
        schema: Union[str, dict, TabularSchema],
        labelled: bool = True,
        skip_bad_rows: bool = False,
        keep_neutral: bool = False,
        explicit: bool = False,
        paths: Optional[Sequence[str]] = None,
        dataset: str = "tabular",
        **limits: int,
    ) -> None:
        super().__init__(source or "", labelled=labelled, skip_bad_rows=skip_bad_rows, **limits)
        self.dataset = dataset
        self.schema = s = as_schema(schema, source if source and os.path.isdir(source) else None)
        self.keep_neutral = keep_neutral
        self.sparse_fields = [f.name for f in s.fields if f.kind != "numeric"]
        self.multi_hot_fields = [f.name for f in s.fields if f.kind == "multi_hot"]
        self.dense_fields = [f.name for f in s.fields if f.kind == "numeric"]
        self.user_fields = list(s.user_fields)
        self.time_ordered = s.time_ordered
        self.min_counts = {f.name: f.min_count for f in s.fields if f.min_count}
        self.field_buckets = {f.name: f.hash_buckets for f in s.fields if f.hash_buckets}
        if s.hash_buckets:
            self.field_buckets = {**{f: s.hash_buckets for f in self.sparse_fields if f not in self.min_counts}, **self.field_buckets}
        self.numeric_transforms = {f.name: f.transform for f in s.fields if f.transform}
        self.defaults = {k: v for k, v in (("min_count", s.min_count), ("numeric", s.numeric)) if v is not None}
        if paths is not None:
            self.files: List[Tuple[str, Optional[str]]] = [(p, None) for p in paths]
        elif explicit:
            pattern = source or ""
            found = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
            self.files = [(p, None) for p in found]
        else:
            self.files = schema_files(s, source if source and os.path.isdir(source) else None)
        self.source = source or ",".join(p for p, _ in self.files)
        self.split_of = {p: split for p, split in self.files}
        self.needed = s.used_columns(labelled)
        self.file_columns: Dict[str, List[str]] = {}
        self.time_cuts: Optional[Dict[str, object]] = None

    # -- planning ---------------------------------------------------------------------------

    def _header(self, path: str) -> List[str]:
        s = self.schema
        if s.format == "parquet":
            import pyarrow.parquet as pq

            with PATHS.open(path, "rb") as f:
                names = pq.ParquetFile(f).schema_arrow.names
        elif s.header:
            import csv

            with open_file(path) as f, naming(path):
                line = f.readline().decode(s.encoding, errors="replace").rstrip("\r\n")
            if not line:
                raise ValueError(f"{path}:1: empty header line (the schema says header: true)")
            names = next(csv.reader([line], delimiter=s.delimiter, quotechar=s.quote or '"', quoting=csv.QUOTE_MINIMAL if s.quote else csv.QUOTE_NONE))
        else:
            names = list(s.columns or [])
            if not self.labelled and s.label.column in names:
                names = [c for c in names if c != s.label.column]
            return names
        check_header(s, names, f"{path}:1" if s.text else path, self.labelled)
        return names

    def plan(self, chunk_bytes: int) -> List[Chunk]:
        for path, _ in self.files:
            if not PATHS.exists(path):
                raise FileNotFoundError(f"{path}: no such file")
            self.file_columns[path] = self._header(path)
        paths = [p for p, _ in self.files]
        if self.schema.text:
            return plan_chunks(paths, chunk_bytes, header=self.schema.header)
        import pyarrow.parquet as pq

        chunks: List[Chunk] = []
        row = 0
        for path in paths:
            with PATHS.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            first = 1
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                if n:
                    chunks.append(Chunk(len(chunks), path, g, g + 1, False, first, row, n))
                first, row = first + n, row + n
            if first == 1:
                raise ValueError(f"{path}: empty file (no rows)")
        return chunks

    def prepare_split(self, splits, chunks: Sequence[Chunk]) -> None:  # type: ignore[no-untyped-def]
        """Before the passes: refuse a time split without an order; with ``time_column``, find
        the split's cut times (one read of that column) so each chunk's rows are assigned alone."""
        if splits is None or splits.kind != "time" or any(self.split_of.values()):
            return
        if self.schema.time_column is None:
            if not self.schema.time_ordered:
                raise ValueError(
                    f"--split time needs an order: the schema ({self.source}) gives neither time_column nor time_ordered: true"
                )
            return
        from iarm_torchrec.data.rows import chunk_payloads

        times = []
        for chunk, data in zip(chunks, chunk_payloads(chunks)):
            table, _, _ = self._read(chunk, data, [self.schema.time_column.column], checking=False)
            t, ok = self._times(table.column(0), self.schema.time_column)
            times.append(np.where(ok, np.nan_to_num(t), np.inf))  # a missing time sorts as 1970, a bad one last
        every = np.concatenate(times)
        total = len(every)
        n_train = int(round(total * splits.train_ratio))
        n_valid = int(round(total * splits.valid_ratio))
        ordered = np.sort(every, kind="stable")
        cuts = []
        for position in (n_train, n_train + n_valid):
            if position >= total:
                cuts.append((np.inf, total, [0] * len(chunks)))
                continue
            value = ordered[position]
            quota = position - int(np.searchsorted(ordered, value, side="left"))
            ties = np.cumsum([0] + [int((t == value).sum()) for t in times])[:-1].tolist()
            cuts.append((float(value), quota, ties))
        self.time_cuts = {"cuts": cuts}

    # -- parsing ----------------------------------------------------------------------------

    def _read(self, chunk: Chunk, data: Optional[bytes], columns: List[str], checking: bool = True):  # type: ignore[no-untyped-def]
        """The chunk's ``columns`` as an Arrow table, its rows' line numbers and a checker."""
        import pyarrow as pa

        s = self.schema
        if s.format == "parquet":
            import pyarrow.parquet as pq

            with PATHS.open(chunk.path, "rb") as f:
                table = pq.ParquetFile(f).read_row_group(chunk.start, columns=columns)
            lines = chunk.first_line + np.arange(table.num_rows, dtype=np.int64)
            return table, lines, _ParquetChecker(chunk.path, chunk.start, lines, self.skip_bad_rows)
        import pyarrow.csv as pacsv

        names = self.file_columns.get(chunk.path) or self._header(chunk.path)
        invalid: List[Tuple[int, int]] = []

        def handler(row) -> str:  # type: ignore[no-untyped-def]
            invalid.append((row.number, row.actual_columns))
            return "skip"

        raw = read_chunk(chunk, data)
        try:
            table = pacsv.read_csv(
                io.BytesIO(raw),
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=max(len(raw) + 1, 1 << 16), encoding=s.encoding),
                parse_options=pacsv.ParseOptions(
                    delimiter=s.delimiter, quote_char=s.quote or False, newlines_in_values=False, ignore_empty_lines=False,
                    invalid_row_handler=handler,
                ),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns, column_types={c: pa.binary() for c in columns},
                    strings_can_be_null=False, quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as error:
            raise ValueError(f"{chunk.path}:{chunk.first_line}-{chunk.first_line + chunk.lines - 1}: cannot parse these lines ({error})") from None
        every = chunk.first_line + np.arange(chunk.lines, dtype=np.int64)
        bad = np.zeros(chunk.lines, dtype=bool)
        found = np.zeros(chunk.lines, dtype=np.int64)
        for number, actual in invalid:
            if 1 <= number <= chunk.lines:
                bad[number - 1], found[number - 1] = True, actual
        if table.num_rows + int(bad.sum()) != chunk.lines:
            lone = _first_lone_carriage_return(raw)
            if lone is not None:
                raise ValueError(
                    f"{chunk.path}:{chunk.first_line + lone}: a carriage return (\\r) inside the line, which the CSV "
                    "reader takes for a line break; remove it, or convert the file's old Mac (\\r) line endings to \\n"
                )
            raise ValueError(
                f"{chunk.path}:{chunk.first_line}-{chunk.first_line + chunk.lines - 1}: {table.num_rows + int(bad.sum())} rows in "
                f"{chunk.lines} lines: a quoted value holds a line break, which is not supported (remove it or change quote)"
            )
        checker = RowChecker(chunk.path, every, self.skip_bad_rows)
        too_long = np.zeros(chunk.lines, dtype=bool)
        if checking:
            lengths = _line_lengths(raw, chunk.lines)
            too_long = lengths > self.max_line_bytes
            checker.flag(too_long, lambda i: f"line of {lengths[i]:,} bytes is longer than the limit of {self.max_line_bytes:,} bytes (max_line_bytes)")
            shown = "tab" if s.delimiter == "\t" else repr(s.delimiter)
            checker.flag(bad & ~too_long, lambda i: f"expected {len(names)} {shown}-separated columns ({', '.join(names)}), found {found[i]}")
        lines = every[~bad]
        kept = RowChecker(chunk.path, lines, self.skip_bad_rows)
        kept.skipped, kept.examples, kept.bad = checker.skipped, checker.examples, too_long[~bad]
        if checking and not raw.isascii():
            self._check_utf8(table, kept)
        return table, lines, kept

    def _check_utf8(self, table, checker: RowChecker) -> None:  # type: ignore[no-untyped-def]
        """Flag text values that are not UTF-8 (after the schema's ``encoding``): never a key of stray bytes."""
        import pyarrow as pa

        for name in table.column_names:
            column = table.column(name).combine_chunks()
            if not pa.types.is_binary(column.type):
                continue
            try:
                column.cast(pa.string())
            except pa.ArrowInvalid:
                values = column.to_pylist()
                bad = np.array([not _is_utf8(v) for v in values])
                checker.flag(bad, lambda i: f"field {name}: {show_token(values[i])} is not UTF-8 text (undecodable bytes)")

    def _times(self, column, source: TimeSource, checker: Optional[RowChecker] = None, name: str = "") -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
        """A time column -> (float64 seconds since the epoch, NaN if missing; valid mask)
        (:func:`~iarm_torchrec.data.times.time_seconds`); bad values flagged."""
        seconds, ok = time_seconds(column, source)
        if checker is not None:
            checker.flag(~ok, lambda i: f"field {name}: {_shown(column[i].as_py())} is not a time "
                         + (f"in the format {source.format!r}" if source.format else f"(a number of {source.unit} since 1970, or a timestamp)"))
        return seconds, ok

    def _label(self, column, checker: RowChecker) -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
        """Labels (``float32``) and which rows are neither positive nor negative (dropped)."""
        import pyarrow as pa

        rule = self.schema.label
        name = rule.column
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        n = len(column)
        if rule.plain:
            if pa.types.is_binary(column.type) or pa.types.is_string(column.type):
                keys = arrow_keys(column)
                one, zero = keys == ord("1"), keys == ord("0")
            else:
                values, _ = arrow_numbers(column)
                one, zero = values == 1, values == 0
            checker.flag(~(one | zero), lambda i: f"field {name}: {_shown(column[i].as_py())} is not 0 or 1")
            return one.astype(np.float32), np.zeros(n, dtype=bool)

        def match(r: Union[str, List[str]]) -> np.ndarray:
            if isinstance(r, list):
                wanted = token_keys(np.array([v.encode() for v in r]))
                return np.isin(arrow_keys(column), wanted)
            m = _RULE.match(r)
            assert m is not None  # checked by the schema
            op, number = m.group(1), float(m.group(2))
            values, ok = arrow_numbers(column)
            checker.flag(~ok | np.isnan(values), lambda i: f"field {name}: {_shown(column[i].as_py())} is not a number (label rule {r!r})")
            return _OPS[op](np.nan_to_num(values, nan=np.inf if op in ("<", "<=") else -np.inf), number)

        positive = match(rule.positive)  # type: ignore[arg-type]
        negative = match(rule.negative) & ~positive if rule.negative is not None else ~positive
        return positive.astype(np.float32), ~(positive | negative)

    def parse(self, chunk: Chunk, data: Optional[bytes]) -> RawRows:
        import pyarrow as pa

        s = self.schema
        table, lines, checker = self._read(chunk, data, self.needed)
        n = table.num_rows
        rows_index = chunk.first_row + (lines - chunk.first_line)
        col = {name: table.column(name) for name in self.needed}
        too_long = []
        for name, column in col.items():
            lengths = _byte_lengths(column.combine_chunks()) if isinstance(column, pa.ChunkedArray) else _byte_lengths(column)
            if lengths is not None and (lengths > self.max_field_bytes).any():
                too_long.append((name, column, lengths > self.max_field_bytes))
        for name, column, long in sorted(too_long, key=lambda t: int(np.argmax(t[2]))):  # earliest row first
            checker.flag(long, lambda i, c=column, nm=name: f"field {nm}: {_shown(c[i].as_py())} is longer than the limit of {self.max_field_bytes:,} bytes (max_field_bytes)")
        labels, neutral = (None, np.zeros(n, dtype=bool))
        if self.labelled:
            labels, neutral = self._label(col[s.label.column], checker)
        dense = np.empty((n, len(self.dense_fields)), dtype=np.float64)
        sparse = np.empty((n, len(self.sparse_fields) - len(self.multi_hot_fields)), dtype=np.uint64)
        multi: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        d = j = 0
        for f in s.fields:
            if f.kind == "numeric":
                values, ok = arrow_numbers(col[f.column])
                column = col[f.column]
                checker.flag(~ok, lambda i, c=column, nm=f.name: f"field {nm}: {_shown(c[i].as_py())} is not a number")
                dense[:, d] = values
                d += 1
            elif f.kind == "multi_hot":
                multi[f.name] = self._multi(col[f.column], f)
            elif f.derive is not None:
                sparse[:, j] = self._derived(col[f.derive.source.column], f, checker)
                j += 1
            else:
                sparse[:, j] = arrow_keys(col[f.column])
                j += 1
        rows = RawRows(lines, rows_index, labels, dense, sparse, multi)
        codes = self._split_codes(chunk, rows_index, col, checker)
        rows.split_codes = codes
        rows.skipped, rows.skipped_examples = checker.skipped, checker.examples
        keep = ~checker.bad
        if neutral.any():
            if self.keep_neutral:
                rows.neutral = int((neutral & keep).sum())
            else:
                keep = keep & ~neutral
        return rows.select(keep) if not keep.all() else rows

    def _multi(self, column, f: FieldSchema) -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        n = len(column)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            lists = column
        else:
            if f.separator is None:
                raise ValueError(f"field {f.name}: column {f.column} is {column.type}, not a list: give the field a separator")
            text = column if pa.types.is_binary(column.type) or pa.types.is_string(column.type) else pc.cast(column, pa.string())
            lists = pc.split_pattern(pc.fill_null(text, pa.scalar(b"" if pa.types.is_binary(text.type) else "", text.type)), f.separator)
        list_lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.list_flatten(lists)
        keys = arrow_keys(values)
        owner = np.repeat(np.arange(n), list_lengths)
        present = keys != 0
        keys, owner = keys[present], owner[present]
        if f.max_length is not None and len(owner):
            starts = np.searchsorted(owner, np.arange(n))
            position = np.arange(len(owner)) - starts[owner]
            cut = position < f.max_length
            keys, owner = keys[cut], owner[cut]
        return keys, np.bincount(owner, minlength=n).astype(np.int32)

    def _derived(self, column, f: FieldSchema, checker: RowChecker) -> np.ndarray:  # type: ignore[no-untyped-def]
        assert f.derive is not None
        seconds, ok = self._times(column, f.derive.source, checker, f.derive.source.column)
        return part_keys(seconds, ok, f.derive.part)

    def _split_codes(self, chunk: Chunk, rows_index: np.ndarray, col, checker: RowChecker) -> Optional[np.ndarray]:  # type: ignore[no-untyped-def]
        split = self.split_of.get(chunk.path)
        if split is not None:
            return np.full(len(rows_index), ("train", "valid", "test").index(split), dtype=np.uint8)
        if self.time_cuts is None:
            return None
        assert self.schema.time_column is not None
        t, ok = self._times(col[self.schema.time_column.column], self.schema.time_column, checker, self.schema.time_column.column)
        t = np.where(ok, np.nan_to_num(t), np.inf)
        codes = np.zeros(len(t), dtype=np.uint8)
        for value, quota, ties in self.time_cuts["cuts"]:  # type: ignore[index]
            tie = t == value
            index = ties[chunk.index] + np.cumsum(tie) - 1
            codes += ((t > value) | (tie & (index >= quota))).astype(np.uint8)
        return codes


def tabular_source_files(schema: Union[str, dict, TabularSchema], source: Optional[str]) -> List[str]:
    """The files a tabular dataset reads (for the cache key)."""
    s = as_schema(schema, source if source and os.path.isdir(source) else None)
    return [p for p, _ in schema_files(s, source if source and os.path.isdir(source) else None)]
