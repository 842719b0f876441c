"""A tabular dataset described once: the schema file (YAML) of ``--dataset tabular --schema FILE``.

Every key, with its default::

    name: my-clicks          # optional, for the record (spec.options["schema"]["name"])
    format: csv              # csv | tsv | parquet (required)
    files: data/*.csv        # one file, a glob, or a list of them (relative to the schema's folder,
                             #   or to --data-dir when given); plain or gzip for csv/tsv
    # splits: {train: train.csv, valid: valid.csv, test: test.csv}   # pre-split files instead of files
    delimiter: ","           # csv: ",", tsv: "\\t"; one character
    quote: '"'               # csv: '"', tsv: none (false); the quoting character
    header: true             # csv/tsv: the first line names the columns (columns found by name)
    columns: [a, b, c]       # headerless files: every column in order (required then); with a
                             #   header: optional, checked against it
    encoding: utf-8          # csv/tsv text encoding (the bytes of categorical values are kept as read)
    label: clk               # a 0/1 column, or a rule:
    # label: {column: rating, positive: "> 3", negative: "< 3"}   # rows matching neither are dropped
    #   (positive/negative: "OP NUMBER" with OP one of > >= < <= == !=, or a list of values;
    #    negative defaults to "every row that is not positive")
    fields:                  # in model order; kinds: categorical, numeric, multi_hot
      - {name: user_id, kind: categorical, min_count: 2}    # column defaults to name
      - {name: item, kind: categorical, column: item_id, hash_buckets: 1000000}
      - {name: price, kind: numeric, transform: log1p}      # log1p | standard | minmax | none
      - {name: tags, kind: multi_hot, separator: "|", max_length: 20}   # separator: text columns;
                             #   a Parquet list column needs none
      - {name: hour, kind: categorical, derive: {from: ts, part: hour, unit: s}}
                             # derived: part = hour | weekday (0 = Monday) | day | month | year;
                             #   from an integer epoch (unit s|ms|us|ns), a Parquet timestamp, or a
                             #   text column with format (strptime, e.g. "%y%m%d%H")
    user_fields: [user_id]   # the fields that describe the user (Eq. 5); required, non-empty
    ignore: [id]             # columns present and not used (every other column must be used)
    time_column: ts          # or {column: ts, unit: s} / {column: day, format: "%Y-%m-%d"}:
                             #   --split time orders rows by it (ties in file order)
    time_ordered: false      # the files are in time order already (--split time cuts in file order)
    min_count: 1             # vocabulary: values seen fewer times in train share id 0 (per field too)
    hash_buckets: 1000000    # hash every categorical field into this many ids (per field too)
    numeric: none            # the default transform of numeric fields, or bucketize (all of them)

:func:`load_schema` reads and validates a file: every error names the file, the key (e.g.
``fields[3].separator``) and what to change. :meth:`TabularSchema.to_dict` is the normalised form
kept in ``spec.json`` (so ``iarm predict`` reads new rows with the same rules) and in the cache key.
"""

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

FORMATS = ("csv", "tsv", "parquet")
KINDS = ("categorical", "numeric", "multi_hot")
FIELD_TRANSFORMS = ("log1p", "standard", "minmax", "none")
GLOBAL_NUMERIC = FIELD_TRANSFORMS + ("bucketize",)
PARTS = ("hour", "weekday", "day", "month", "year")
UNITS = ("s", "ms", "us", "ns")
SPLIT_NAMES = ("train", "valid", "test")
_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.eE+-]+)\s*$")
_TOP_KEYS = {
    "name", "format", "files", "splits", "delimiter", "quote", "header", "columns", "encoding", "label",
    "fields", "user_fields", "ignore", "time_column", "time_ordered", "min_count", "hash_buckets", "numeric",
}  # fmt: skip
_FIELD_KEYS = {"name", "kind", "column", "transform", "separator", "max_length", "min_count", "hash_buckets", "derive"}


class SchemaError(ValueError):
    """A schema file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class TimeSource:
    """Where a time comes from: ``column`` as an epoch in ``unit``, a timestamp, or text in ``format``."""

    column: str
    unit: str = "s"
    format: Optional[str] = None


@dataclass(frozen=True)
class Derive:
    """A categorical field computed from a time column: its ``part`` (hour, weekday, ...)."""

    source: TimeSource
    part: str


@dataclass(frozen=True)
class FieldSchema:
    name: str
    kind: str
    column: str
    transform: Optional[str] = None
    separator: Optional[str] = None
    max_length: Optional[int] = None
    min_count: Optional[int] = None
    hash_buckets: Optional[int] = None
    derive: Optional[Derive] = None


@dataclass(frozen=True)
class LabelRule:
    """The label: ``column`` read as 0/1, or ``positive`` / ``negative`` rules (rows matching neither dropped)."""

    column: str
    positive: Optional[Union[str, List[str]]] = None
    negative: Optional[Union[str, List[str]]] = None

    @property
    def plain(self) -> bool:
        return self.positive is None


@dataclass(frozen=True)
class TabularSchema:
    format: str
    fields: List[FieldSchema]
    label: LabelRule
    user_fields: List[str]
    files: List[str] = field(default_factory=list)
    splits: Dict[str, List[str]] = field(default_factory=dict)
    delimiter: str = ","
    quote: Optional[str] = '"'
    header: bool = True
    columns: Optional[List[str]] = None
    encoding: str = "utf-8"
    ignore: List[str] = field(default_factory=list)
    time_column: Optional[TimeSource] = None
    time_ordered: bool = False
    min_count: Optional[int] = None
    hash_buckets: Optional[int] = None
    numeric: Optional[str] = None
    name: str = "tabular"
    base_dir: str = "."

    @property
    def text(self) -> bool:
        return self.format in ("csv", "tsv")

    def used_columns(self, labelled: bool = True) -> List[str]:
        """The columns the reader needs, in first-use order."""
        cols: List[str] = [self.label.column] if labelled else []
        for f in self.fields:
            cols.append(f.derive.source.column if f.derive else f.column)
        if self.time_column:
            cols.append(self.time_column.column)
        return list(dict.fromkeys(cols))

    def to_dict(self) -> Dict[str, Any]:
        """The normalised schema (JSON-able; :func:`schema_from_dict` reads it back)."""
        return asdict(self)


def schema_from_dict(data: Dict[str, Any]) -> TabularSchema:
    """The schema of :meth:`TabularSchema.to_dict`'s output."""
    d = dict(data)

    def time(t: Optional[Dict[str, Any]]) -> Optional[TimeSource]:
        return None if t is None else TimeSource(**t)

    d["fields"] = [
        FieldSchema(**{**f, "derive": Derive(time(f["derive"]["source"]), f["derive"]["part"]) if f.get("derive") else None})  # type: ignore[arg-type]
        for f in d["fields"]
    ]
    d["label"] = LabelRule(**d["label"])
    d["time_column"] = time(d.get("time_column"))
    return TabularSchema(**d)


def load_schema(path: Union[str, Path], base_dir: Optional[str] = None) -> TabularSchema:
    """Read and validate a schema file; relative file names resolve against ``base_dir``
    (default: the schema file's folder)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such schema file")
    try:
        # libyaml's C loader where PyYAML has it (the pure-Python one took ~0.3 s of a scoring
        # run's start-up on a built-in schema); the same safe subset of YAML either way
        data = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as error:
        raise SchemaError(f"{path}: not valid YAML ({str(error).splitlines()[0]} ...)") from None
    return parse_schema(data, str(path), base_dir or str(path.resolve().parent))


def parse_schema(data: Any, where: str = "schema", base_dir: str = ".") -> TabularSchema:
    """Validate a schema given as a mapping (what the YAML file holds)."""

    def fail(key: str, message: str) -> SchemaError:
        return SchemaError(f"{where}: {key}: {message}")

    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a mapping of keys (format, files, label, fields, ...), got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; known keys: {', '.join(sorted(_TOP_KEYS))}")
    fmt = data.get("format")
    if fmt not in FORMATS:
        raise fail("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")

    def str_list(key: str, value: Any) -> List[str]:
        if isinstance(value, str) and value:
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return list(value)
        raise fail(key, f"expected a file name, a glob or a list of them, got {value!r}")

    files: List[str] = []
    splits: Dict[str, List[str]] = {}
    if "files" in data and "splits" in data:
        raise fail("splits", "give either files (one table, split by --split) or splits (pre-split files), not both")
    if "files" in data:
        files = str_list("files", data["files"])
    elif "splits" in data:
        if not isinstance(data["splits"], dict) or "train" not in data["splits"]:
            raise fail("splits", f"expected a mapping with train (and valid, test) files, got {data['splits']!r}")
        for name, value in data["splits"].items():
            if name not in SPLIT_NAMES:
                raise fail(f"splits.{name}", f"unknown split; splits are {', '.join(SPLIT_NAMES)}")
            splits[name] = str_list(f"splits.{name}", value)
    text = fmt in ("csv", "tsv")
    delimiter = data.get("delimiter", "\t" if fmt == "tsv" else ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise fail("delimiter", f"must be one character, got {delimiter!r}")
    quote = data.get("quote", None if fmt == "tsv" else '"')
    if quote is False:
        quote = None
    if quote is not None and (not isinstance(quote, str) or len(quote) != 1):
        raise fail("quote", f"must be one character or false (no quoting), got {quote!r}")
    header = data.get("header", True)
    if not isinstance(header, bool):
        raise fail("header", f"must be true or false, got {header!r}")
    columns = data.get("columns")
    if columns is not None:
        if not (isinstance(columns, list) and columns and all(isinstance(c, str) and c for c in columns)):
            raise fail("columns", f"expected a list of column names, got {columns!r}")
        dup = sorted({c for c in columns if columns.count(c) > 1})
        if dup:
            raise fail("columns", f"names {dup} appear twice")
    if text and not header and columns is None:
        raise fail("columns", "a headerless file (header: false) needs its column names, in order")
    if not text:
        for key in ("delimiter", "quote", "header", "encoding"):
            if key in data:
                raise fail(key, "applies to csv and tsv only, not parquet")
    encoding = data.get("encoding", "utf-8")

    label_value = data.get("label")
    if isinstance(label_value, str) and label_value:
        label = LabelRule(label_value)
    elif isinstance(label_value, dict):
        extra = sorted(set(label_value) - {"column", "positive", "negative"})
        if extra:
            raise fail(f"label.{extra[0]}", "unknown key; label takes column, positive, negative")
        if not isinstance(label_value.get("column"), str):
            raise fail("label.column", "the label's column name is required")
        for key in ("positive", "negative"):
            rule = label_value.get(key)
            if rule is None:
                continue
            if isinstance(rule, (int, float)) and not isinstance(rule, bool):
                label_value[key] = rule = f"== {rule}"
            if isinstance(rule, str) and not _RULE.match(rule):
                raise fail(f"label.{key}", f"expected 'OP NUMBER' (OP one of > >= < <= == !=), e.g. '> 3', or a list of values; got {rule!r}")
            if isinstance(rule, list):
                label_value[key] = [str(v) for v in rule]
        if label_value.get("positive") is None:
            raise fail("label.positive", "a label rule needs positive (e.g. '> 3'); for a 0/1 column write label: COLUMN")
        label = LabelRule(label_value["column"], label_value.get("positive"), label_value.get("negative"))
    else:
        raise fail("label", f"expected a 0/1 column name or {{column, positive, negative}}, got {label_value!r}")

    def positive_int(key: str, value: Any) -> Optional[int]:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise fail(key, f"must be a positive integer, got {value!r}")
        return value

    def time_source(key: str, value: Any) -> TimeSource:
        if isinstance(value, str) and value:
            return TimeSource(value)
        if not isinstance(value, dict):
            raise fail(key, f"expected a column name or {{column, unit, format}}, got {value!r}")
        column = value.get("column", value.get("from"))
        if not isinstance(column, str):
            raise fail(f"{key}.column", "the time's column name is required")
        unit = value.get("unit", "s")
        if unit not in UNITS:
            raise fail(f"{key}.unit", f"must be one of {', '.join(UNITS)}, got {unit!r}")
        fmt_ = value.get("format")
        if fmt_ is not None and (not isinstance(fmt_, str) or "%" not in fmt_):
            raise fail(f"{key}.format", f"expected a strptime format such as '%Y-%m-%d %H:%M:%S', got {fmt_!r}")
        extra = sorted(set(value) - {"column", "from", "unit", "format", "part"})
        if extra:
            raise fail(f"{key}.{extra[0]}", "unknown key; a time takes column (or from), unit, format")
        return TimeSource(column, unit, fmt_)

    raw_fields = data.get("fields")
    if not isinstance(raw_fields, list) or not raw_fields:
        raise fail("fields", "expected a non-empty list of fields ({name, kind, ...})")
    fields: List[FieldSchema] = []
    for i, f in enumerate(raw_fields):
        key = f"fields[{i}]"
        if not isinstance(f, dict):
            raise fail(key, f"expected a mapping such as {{name: user_id, kind: categorical}}, got {f!r}")
        unknown = sorted(set(f) - _FIELD_KEYS)
        if unknown:
            raise fail(f"{key}.{unknown[0]}", f"unknown key; a field takes {', '.join(sorted(_FIELD_KEYS))}")
        name = f.get("name")
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise fail(f"{key}.name", f"expected a name of letters, digits, _ . - (it names files), got {name!r}")
        key = f"fields[{i}] ({name})"
        kind = f.get("kind")
        if kind not in KINDS:
            raise fail(f"{key}.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        transform = f.get("transform")
        if transform is not None and (kind != "numeric" or transform not in FIELD_TRANSFORMS):
            raise fail(f"{key}.transform", f"a numeric field's transform is one of {', '.join(FIELD_TRANSFORMS)}; got {transform!r} on a {kind} field")
        separator = f.get("separator")
        if separator is not None and (kind != "multi_hot" or not isinstance(separator, str) or not separator):
            raise fail(f"{key}.separator", "applies to multi_hot fields, as a non-empty string such as '|'")
        if kind == "multi_hot" and text and separator is None:
            raise fail(f"{key}.separator", "a multi_hot field of a csv/tsv file needs its separator, e.g. '|'")
        if text and separator is not None and separator == delimiter:
            raise fail(f"{key}.separator", f"must differ from the delimiter {delimiter!r}")
        max_length = positive_int(f"{key}.max_length", f.get("max_length"))
        if max_length is not None and kind != "multi_hot":
            raise fail(f"{key}.max_length", "applies to multi_hot fields only")
        min_count = positive_int(f"{key}.min_count", f.get("min_count"))
        buckets = positive_int(f"{key}.hash_buckets", f.get("hash_buckets"))
        if kind == "numeric" and (min_count or buckets):
            raise fail(f"{key}.{'min_count' if min_count else 'hash_buckets'}", "applies to categorical and multi_hot fields only")
        if min_count and buckets:
            raise fail(f"{key}.hash_buckets", "a hashed field has no vocabulary, so no min_count: give one of them")
        derive = None
        if f.get("derive") is not None:
            d = f["derive"]
            if kind != "categorical" or not isinstance(d, dict):
                raise fail(f"{key}.derive", "a derived field is categorical, derive being {from: COLUMN, part: hour|weekday|day|month|year, unit|format}")
            if d.get("part") not in PARTS:
                raise fail(f"{key}.derive.part", f"must be one of {', '.join(PARTS)}, got {d.get('part')!r}")
            derive = Derive(time_source(f"{key}.derive", d), d["part"])
            if "column" in f:
                raise fail(f"{key}.column", "a derived field reads derive.from, not column")
        column = f.get("column", name)
        if not isinstance(column, str) or not column:
            raise fail(f"{key}.column", f"expected a column name, got {column!r}")
        fields.append(FieldSchema(name, kind, column, transform, separator, max_length, min_count, buckets, derive))
    names = [f.name for f in fields]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise fail("fields", f"field names {dup} appear twice; each field needs its own name")

    user = data.get("user_fields")
    if isinstance(user, str):
        user = [u.strip() for u in user.split(",") if u.strip()]
    if not isinstance(user, list) or not user:
        raise fail("user_fields", "list the fields that describe the user (Eq. 5), e.g. [user_id, age]")
    missing = [u for u in user if u not in names]
    if missing:
        raise fail("user_fields", f"{missing} are not fields; fields are {names}")

    ignore = data.get("ignore", [])
    if isinstance(ignore, str):
        ignore = [ignore]
    if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
        raise fail("ignore", f"expected a list of column names, got {ignore!r}")
    time_column = time_source("time_column", data["time_column"]) if data.get("time_column") is not None else None
    time_ordered = data.get("time_ordered", False)
    if not isinstance(time_ordered, bool):
        raise fail("time_ordered", f"must be true or false, got {time_ordered!r}")
    numeric = data.get("numeric")
    if numeric is not None and numeric not in GLOBAL_NUMERIC:
        raise fail("numeric", f"must be one of {', '.join(GLOBAL_NUMERIC)}, got {numeric!r}")
    schema = TabularSchema(
        format=fmt,
        fields=fields,
        label=label,
        user_fields=user,
        files=files,
        splits=splits,
        delimiter=delimiter,
        quote=quote,
        header=header,
        columns=columns,
        encoding=str(encoding),
        ignore=list(ignore),
        time_column=time_column,
        time_ordered=time_ordered,
        min_count=positive_int("min_count", data.get("min_count")),
        hash_buckets=positive_int("hash_buckets", data.get("hash_buckets")),
        numeric=numeric,
        name=str(data.get("name", "tabular")),
        base_dir=base_dir,
    )
    if columns is not None:
        absent = [c for c in schema.used_columns() if c not in columns]
        if absent:
            raise fail("columns", f"does not list the columns {absent} that label, fields or time_column read")
        both = [c for c in ignore if c in schema.used_columns()]
        if both:
            raise fail("ignore", f"{both} are read by label, fields or time_column; remove them from ignore")
    return schema


def check_header(schema: TabularSchema, header: Sequence[str], where: str, labelled: bool = True) -> None:
    """Refuse a file whose columns miss what the schema reads, or hold columns it does not mention."""
    if schema.columns is not None and list(header) != list(schema.columns) and schema.header:
        if not labelled and [c for c in schema.columns if c != schema.label.column] == list(header):
            return
        raise ValueError(f"{where}: columns {list(header)} differ from the schema's columns {schema.columns}")
    needed = schema.used_columns(labelled)
    missing = [c for c in needed if c not in header]
    if missing:
        hint = " (scoring rows without labels? pass --unlabelled)" if labelled and missing == [schema.label.column] else ""
        raise ValueError(f"{where}: columns {missing} that the schema reads are missing; the file has {list(header)}{hint}")
    known = set(needed) | set(schema.ignore) | {schema.label.column}
    extra = [c for c in header if c not in known]
    if extra:
        raise ValueError(f"{where}: columns {extra} are not described by the schema: add them to ignore, or as fields")
    dup = sorted({c for c in header if list(header).count(c) > 1})
    if dup:
        raise ValueError(f"{where}: columns {dup} appear twice in the header")
