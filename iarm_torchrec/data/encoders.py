"""A dataset's encoders, in one place: how a field's raw value becomes a model input.

Preprocessing (file chunks, :mod:`~iarm_torchrec.data.preprocess`) and online scoring (JSON
rows, :class:`RowEncoder`, used by ``iarm serve``) share these rules, so a server can never encode
differently from training:

* a categorical value is a token (its text, UTF-8) -> a ``uint64`` key
  (:func:`~iarm_torchrec.data.vocab.token_keys`) -> an id by the field's vocabulary or hashing
  (:func:`field_lookups`: ``("vocab", path)`` or ``("hash", buckets)``); missing and unseen values
  get id 0 (:data:`~iarm_torchrec.data.vocab.OOV_ID`);
* a numerical value -> ``float64`` (NaN when missing) -> the dataset's transform with the train
  split's statistics (:func:`transform_dense`), or, when the dataset bucketizes its numerical
  fields (``options["bucketized"]``), a categorical id (:func:`~iarm_torchrec.data.numeric.bucketize`).

A JSON row names the spec's fields (``FeatureSpec.field_names``) as the dataset's reader derives
them, e.g. MovieLens' ``year`` (``"1995"``, ``"1960s"``), Avazu's ``hour_of_day`` and ``weekday``;
a multi-hot field takes a list of values or one ``|``-separated string. A row of a schema's dataset
(``options["schema"]``: ``--dataset tabular``, Avazu) may instead carry the time column that
fields are derived from, as the table holds it (an epoch number in the schema's ``unit``, or its text;
text in the schema's ``format``, or an integer as its digits): every field derived from it is then
derived by preprocessing's rules (:mod:`~iarm_torchrec.data.times`), e.g. Avazu's ``"hour": "14102113"``
gives ``hour_of_day`` 13 and ``weekday`` 1. A row giving both the time and a field derived from it is
refused (two values that could disagree); ``null`` counts as not given.

Example::

    >>> import tempfile
    >>> from iarm_torchrec.data.spec import FeatureSpec, SparseFieldSpec
    >>> spec = FeatureSpec("toy", [SparseFieldSpec("c", 5), SparseFieldSpec("tags", 3, True, 2)], dense=["x"],
    ...                    options={"hash_buckets": {"c": 4, "tags": 2}, "numeric": "log1p"})
    >>> enc = RowEncoder(spec, tempfile.mkdtemp())
    >>> dense, one_hot, multi = enc.encode([{"c": "a", "tags": ["p", "q"], "x": 0}, {}])
    >>> dense.tolist(), one_hot[:, 0].tolist(), multi["tags"][1].tolist()
    ([[0.0], [0.0]], [2, 0], [2, 0])
    >>> enc.encode([{"x": "three"}])
    Traceback (most recent call last):
    ...
    iarm_torchrec.data.encoders.RowError: row 0: field 'x': expected a number or null, got str 'three'
    >>> from iarm_torchrec.data.schema import parse_schema
    >>> schema = {"format": "csv", "label": "y", "user_fields": ["c"], "fields": [{"name": "c", "kind": "categorical"},
    ...           {"name": "hour", "kind": "categorical", "derive": {"from": "ts", "part": "hour"}}]}
    >>> spec = FeatureSpec("toy", [SparseFieldSpec("c", 5), SparseFieldSpec("hour", 25)],
    ...                    options={"hash_buckets": {"c": 4, "hour": 24}, "schema": parse_schema(schema).to_dict()})
    >>> enc = RowEncoder(spec, tempfile.mkdtemp())
    >>> enc.fields
    {'c': 'one_hot', 'hour': 'one_hot', 'ts': 'time'}
    >>> bool((enc.encode([{"ts": 1700000000}])[1] == enc.encode([{"hour": 22}])[1]).all())  # 2023-11-14 22:13 UTC
    True
"""

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from iarm_torchrec.data.numeric import NumericStats, bucketize, transform
from iarm_torchrec.data.schema import TimeSource, schema_from_dict
from iarm_torchrec.data.spec import FeatureSpec
from iarm_torchrec.data.times import part_keys, time_seconds
from iarm_torchrec.data.vocab import HashedVocabulary, Vocabulary, token_keys

LookupPlan = Tuple[str, Union[str, int]]  # ("vocab", path) | ("hash", buckets)
Lookup = Union[Vocabulary, HashedVocabulary]
MULTI_HOT_SEPARATOR = "|"
MAX_TOKEN_BYTES = 1024  # a longer categorical value in a JSON row is refused


def field_lookups(fields: Sequence[str], hash_buckets: Mapping[str, int], vocab_dir: Path) -> Dict[str, LookupPlan]:
    """Per categorical field how its keys become ids: hashing for the fields in ``hash_buckets``,
    else the vocabulary ``vocab_dir/<field>.npy``."""
    return {f: ("hash", int(hash_buckets[f])) if f in hash_buckets else ("vocab", str(vocab_dir / f"{f}.npy")) for f in fields}


def make_lookup(plan: LookupPlan) -> Lookup:
    """The vocabulary (memory-mapped) or hashing of one :func:`field_lookups` entry."""
    kind, arg = plan
    return Vocabulary.load(arg) if kind == "vocab" else HashedVocabulary(int(arg))


def transform_dense(
    raw: np.ndarray,
    fields: Sequence[str],
    numeric: str,
    stats: Mapping[str, Mapping[str, float]],
    per_field: Optional[Mapping[str, str]] = None,
) -> np.ndarray:
    """Raw numbers ``float64 [n, N]`` (NaN = missing), columns in ``fields`` order -> ``float32``
    model inputs by the dataset's transform (``per_field`` overrides it for some fields: a tabular
    schema's ``transform``, ``spec.options["numeric_fields"]``) and train-split statistics."""
    dense = np.empty(raw.shape, dtype=np.float32)
    per_field = per_field or {}
    for j, name in enumerate(fields):
        s = NumericStats.from_dict(dict(stats[name])) if name in stats else NumericStats()  # log1p/none need none
        dense[:, j] = transform(raw[:, j], per_field.get(name, numeric), s)
    return dense


class RowError(ValueError):
    """A JSON row that cannot be encoded; the message names the row and the field."""

    def __init__(self, row: int, field: Optional[str], message: str) -> None:
        self.row, self.field = row, field
        super().__init__(f"row {row}: field {field!r}: {message}" if field else f"row {row}: {message}")


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


class RowEncoder:
    """Encodes raw rows (``{field: value}`` mappings) with a preprocessed dataset's encoders.

    A row's keys are the spec's fields and, for a schema's dataset, the time columns that fields are
    derived from (:attr:`fields`, kind ``time``). A time column named like a field is that field's
    value; it is also the time when that field reads the column itself (a field ``ts`` beside
    ``hour`` derived from ``ts``), else the fields derived from it must be given directly.

    Args:
        spec: the dataset's feature spec (its ``options`` hold hashing, transform, statistics and,
            for a schema's dataset, the schema).
        vocab_dir: the folder of its vocabularies (``<field>.npy``).
    """

    def __init__(self, spec: FeatureSpec, vocab_dir: Union[str, Path]) -> None:
        options = spec.options
        self.spec = spec
        self.numeric: str = options.get("numeric", "none")
        self.stats: Dict[str, Dict[str, float]] = dict(options.get("numeric_stats", {}))
        self.numeric_fields: Dict[str, str] = dict(options.get("numeric_fields", {}) or {})
        self.bucketized: List[str] = list(options.get("bucketized", []))
        categorical = [f.name for f in spec.sparse if f.name not in self.bucketized]
        plans = field_lookups(categorical, options.get("hash_buckets", {}) or {}, Path(vocab_dir))
        self.lookups: Dict[str, Lookup] = {name: make_lookup(plan) for name, plan in plans.items()}
        self.one_hot_fields: List[str] = spec.one_hot_fields
        self.multi_hot_fields: List[str] = spec.multi_hot_fields
        self.dense_fields: List[str] = list(spec.dense)
        self._kinds: Dict[str, str] = {
            **{f: "one_hot" for f in self.one_hot_fields},
            **{f: "multi_hot" for f in self.multi_hot_fields},
            **{f: "dense" for f in self.dense_fields},
            **{f: "bucketized" for f in self.bucketized},
        }
        # time column -> its sources (a unit or format; one, unless fields read it differently) -> (field, part)
        self.times: Dict[str, Dict[TimeSource, List[Tuple[str, str]]]] = {}
        schema = {f.name: f for f in schema_from_dict(options["schema"]).fields} if options.get("schema") else {}
        for f in schema.values():
            if f.derive is None:
                continue
            column = f.derive.source.column
            named = schema.get(column)
            if named is None or (named.derive is None and named.column == column):
                self.times.setdefault(column, {}).setdefault(f.derive.source, []).append((f.name, f.derive.part))
        self._derived_from = {column: [name for fields in sources.values() for name, _ in fields] for column, sources in self.times.items()}

    @property
    def fields(self) -> Dict[str, str]:
        """Every field a row may name, with its kind (``one_hot``, ``multi_hot``, ``dense``,
        ``bucketized``: a number that becomes a categorical id), then the time columns fields are
        derived from (``time``)."""
        return {**self._kinds, **{column: "time" for column in self.times if column not in self._kinds}}

    def encode(self, rows: Sequence[Any]) -> Tuple[np.ndarray, np.ndarray, Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """``dense float32 [n, N]``, one-hot ids ``int32 [n, F1]`` (``one_hot_fields`` order) and per
        multi-hot field ``(int32 values, int32 lengths)``; raises :class:`RowError` on bad input."""
        n = len(rows)
        raw_dense = np.full((n, len(self.dense_fields)), np.nan, dtype=np.float64)
        tokens = np.zeros((n, len(self.one_hot_fields)), dtype=object)
        tokens[:] = b""
        multi_tokens: Dict[str, List[bytes]] = {f: [] for f in self.multi_hot_fields}
        multi_lengths = {f: np.zeros(n, dtype=np.int32) for f in self.multi_hot_fields}
        one_hot_col = {f: j for j, f in enumerate(self.one_hot_fields)}
        dense_col = {f: j for j, f in enumerate(self.dense_fields)}
        raw_buckets = np.full((n, len(self.bucketized)), np.nan, dtype=np.float64)
        bucket_col = {f: j for j, f in enumerate(self.bucketized)}
        times: Dict[str, List[Tuple[int, Any]]] = {column: [] for column in self.times}  # (row, value)
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise RowError(i, None, f"expected an object of field -> value, got {_show(row)}")
            for name, value in row.items():
                kind = self._kinds.get(name)
                if kind is None and name not in self.times:
                    raise RowError(i, name, f"unknown field; fields are {sorted(self.fields)}")
                if value is None:
                    continue
                if name in self.times:
                    both = next((f for f in self._derived_from[name] if row.get(f) is not None), None)
                    if both is not None:
                        raise RowError(i, both, f"given along with {name!r}, from which it is derived; give one of them")
                    times[name].append((i, value))
                if kind is None:
                    continue
                if kind == "dense":
                    raw_dense[i, dense_col[name]] = self._number(i, name, value)
                elif kind == "bucketized":
                    raw_buckets[i, bucket_col[name]] = self._number(i, name, value)
                elif kind == "one_hot":
                    tokens[i, one_hot_col[name]] = self._token(i, name, value)
                else:
                    values = value.split(MULTI_HOT_SEPARATOR) if isinstance(value, str) else value
                    if not isinstance(values, list):
                        raise RowError(i, name, f"expected a list of values or a '|'-separated string, got {_show(value)}")
                    kept = [self._token(i, name, v) for v in values if v is not None and v != ""]
                    multi_tokens[name].extend(kept)
                    multi_lengths[name][i] = len(kept)
        derived: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for column, given in times.items():
            if given:
                derived.update(self._derive(column, given))
        dense = transform_dense(raw_dense, self.dense_fields, self.numeric, self.stats, self.numeric_fields)
        one_hot = np.empty((n, len(self.one_hot_fields)), dtype=np.int32)
        for j, name in enumerate(self.one_hot_fields):
            if name in bucket_col:
                one_hot[:, j] = bucketize(raw_buckets[:, bucket_col[name]])
            else:
                keys = _keys(tokens[:, j])
                if name in derived:
                    keys[derived[name][0]] = derived[name][1]
                one_hot[:, j] = self.lookups[name].ids(keys)
        multi = {
            name: (self.lookups[name].ids(_keys(np.array(multi_tokens[name], dtype=object))), multi_lengths[name])
            for name in self.multi_hot_fields
        }
        return dense, one_hot, multi

    def _derive(self, column: str, given: List[Tuple[int, Any]]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """The fields derived from time ``column``, given as ``(row, value)`` pairs: per field the
        rows ``int64 [m]`` and their keys ``uint64 [m]``, by :mod:`~iarm_torchrec.data.times`."""
        import pyarrow as pa

        rows = np.array([i for i, _ in given], dtype=np.int64)
        out: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for source, fields in self.times[column].items():
            texts = [self._time_text(i, column, value, source) for i, value in given]
            seconds, ok = time_seconds(pa.array(texts, pa.string()), source)
            if not ok.all():
                i, value = given[int(np.argmin(ok))]
                expected = f"text in the format {source.format!r}" if source.format else f"a number of {source.unit} since 1970"
                raise RowError(i, column, f"expected a time ({expected}), got {_show(value)}")
            out.update({name: (rows, part_keys(seconds, ok, part)) for name, part in fields})
        return out

    @classmethod
    def _time_text(cls, i: int, column: str, value: Any, source: TimeSource) -> str:
        """A JSON time value as a table's cell would hold it: text as it is, an integer as its digits,
        a number of ``unit`` (no ``format``) as the shortest text that reads back as it."""
        if isinstance(value, float) and not source.format:
            return repr(cls._number(i, column, value))
        try:
            return cls._token(i, column, value).decode("utf-8")
        except UnicodeDecodeError:
            raise RowError(i, column, f"{_show(value)} is not UTF-8 text") from None

    @staticmethod
    def _number(i: int, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RowError(i, name, f"expected a number or null, got {_show(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise RowError(i, name, f"expected a finite number, got {_show(value)}")
        return number

    @staticmethod
    def _token(i: int, name: str, value: Any) -> bytes:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RowError(i, name, f"expected a string or an integer, got {_show(value)}")
        token = (value if isinstance(value, str) else str(value)).encode("utf-8", errors="surrogatepass")
        if len(token) > MAX_TOKEN_BYTES:
            raise RowError(i, name, f"value of {len(token)} bytes is longer than {MAX_TOKEN_BYTES}")
        if b"\x00" in token:
            raise RowError(i, name, "value holds a NUL character")
        return token


def _keys(tokens: np.ndarray) -> np.ndarray:
    """``bytes`` objects -> ``uint64`` keys (:func:`token_keys`), empty input included."""
    if not len(tokens):
        return np.zeros(0, dtype=np.uint64)
    return token_keys(tokens.astype(bytes))
