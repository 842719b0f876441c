"""A schema's times: a time column's values -> seconds since 1970 (UTC) -> a calendar part -> its key.

One set of rules for a :class:`~iarm_torchrec.data.schema.TimeSource`, used by the tabular reader
(Arrow columns of a file: derived fields, ``--split time``) and by
:class:`~iarm_torchrec.data.encoders.RowEncoder` (the time column of a JSON row), so a derived field
is the same whichever way its time arrives:

* an Arrow timestamp or date: its instant (a timestamp without a zone is read as UTC);
* a ``format``: text parsed by Arrow's ``strptime`` as UTC, valid only if formatting the time again
  gives the text back (so ``2024-02-30`` or trailing characters are not times);
* else a number of ``unit`` (s, ms, us, ns) since 1970-01-01 UTC, in a text column its decimal text;
  an empty or null number is a missing time, whose parts are missing (key 0), not 1970's.

A part (:data:`~iarm_torchrec.data.schema.PARTS`) is the UTC calendar's: ``hour`` 0-23, ``weekday``
0 (Monday) to 6, ``day`` 1-31, ``month`` 1-12, ``year``; its key is that of its decimal text
(:func:`~iarm_torchrec.data.vocab.token_keys`), so hour 13 is the token ``"13"``.

pyarrow is imported by :func:`time_seconds` only, on first use.
"""

from typing import Tuple

import numpy as np

from iarm_torchrec.data.schema import TimeSource
from iarm_torchrec.data.vocab import token_keys

UNIT_SECONDS = {"s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}


def time_seconds(column, source: TimeSource) -> Tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """An Arrow array (or chunked array) of ``source``'s times -> ``(float64 seconds [n], valid [n])``;
    seconds are NaN where a number is missing (null, or empty text: valid) and 0 where a value is
    not a time."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from iarm_torchrec.data.tabular import arrow_numbers

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        seconds = pc.cast(pc.cast(column, pa.timestamp("us")), pa.int64()).to_numpy(zero_copy_only=False) / 1e6
        ok = ~np.asarray(column.is_null()) if column.null_count else np.ones(n, dtype=bool)
    elif source.format:
        text = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
        parsed = pc.strptime(text, format=source.format, unit="s", error_is_null=True)
        again = pc.strftime(parsed, format=source.format)
        ok = np.asarray(pc.fill_null(pc.equal(again, text), False))
        seconds = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        values, ok = arrow_numbers(column)
        seconds = values * UNIT_SECONDS[source.unit]
    return np.where(ok, seconds, 0.0), ok


def part_values(seconds: np.ndarray, part: str) -> np.ndarray:
    """Seconds since 1970 ``float64 [n]`` -> the UTC calendar ``part`` of each, ``int64 [n]``.

    >>> t = np.array([0.0, 1_700_000_000.0])  # 1970-01-01 00:00, 2023-11-14 22:13 UTC
    >>> [part_values(t, p).tolist() for p in ("hour", "weekday", "day", "month", "year")]
    [[0, 22], [3, 1], [1, 14], [1, 11], [1970, 2023]]
    """
    whole = np.floor(seconds).astype(np.int64)
    days = whole // 86400
    if part == "hour":
        return whole // 3600 % 24
    if part == "weekday":
        return (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    date = days.astype("datetime64[D]")
    if part == "year":
        return date.astype("datetime64[Y]").astype(np.int64) + 1970
    if part == "month":
        return date.astype("datetime64[M]").astype(np.int64) % 12 + 1
    if part == "day":
        return (date - date.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    raise ValueError(f"unknown time part {part!r}")


def part_keys(seconds: np.ndarray, ok: np.ndarray, part: str) -> np.ndarray:
    """The ``uint64`` keys of :func:`part_values`' decimal text; key 0 (missing) where a time is
    missing (NaN) or not ``ok``."""
    missing = ~ok | np.isnan(seconds)
    keys = token_keys(part_values(np.where(missing, 0.0, seconds), part).astype("S20"))
    keys[missing] = 0
    return keys
