"""Avazu mobile-ad clicks: Kaggle ``train.csv`` (and the unlabelled ``test.csv``).

Comma-separated with a header line: ``id`` (dropped), ``click`` (the label; absent in
``test.csv``), ``hour`` as ``YYMMDDHH`` and 21 categorical fields. Columns are found by the header,
so their order does not matter; a missing or unknown column is an error. ``hour`` becomes two
categorical fields, ``hour_of_day`` (0-23) and ``weekday`` (0 = Monday), and orders the rows in
time (the file is sorted by hour, which the time split relies on). Avazu has no numerical field.
"""

from typing import List, Optional, Tuple

import numpy as np

from iarm_torchrec.data.rows import PATHS, Chunk, RawRows, RowReader, find_file, open_file, parse_ints, parse_labels
from iarm_torchrec.data.rows import naming, plan_chunks, read_chunk, split_table
from iarm_torchrec.data.vocab import token_keys

CAT_FIELDS = [
    "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain", "app_category",
    "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
    "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip
HOUR_FIELDS = ["hour_of_day", "weekday"]


def hour_fields(hours: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``YYMMDDHH`` integers -> (hour of day, weekday with 0 = Monday, valid mask).

    >>> h, w, ok = hour_fields(np.array([14102100, 14102523, 14023000]))
    >>> h.tolist(), w.tolist(), ok.tolist()
    ([0, 23, 0], [1, 5, 6], [True, True, False])
    """
    hours = hours.astype(np.int64)
    yy, mm, dd, hh = hours // 1_000_000, hours // 10_000 % 100, hours // 100 % 100, hours % 100
    months = ((2000 + yy - 1970) * 12 + np.clip(mm, 1, 12) - 1).astype("datetime64[M]")
    days = months.astype("datetime64[D]") + (np.clip(dd, 1, 31) - 1)
    # a day past the month's end rolls into the next month: then the date is not real
    real = days.astype("datetime64[M]") == months
    ok = (hours >= 0) & (mm >= 1) & (mm <= 12) & (dd >= 1) & (dd <= 31) & (hh <= 23) & real
    weekday = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    return hh, weekday, ok


def avazu_file(source: str) -> str:
    """The file of an Avazu source: the file itself, or a folder's ``train.csv``."""
    return find_file(source, ["train.csv"]) if PATHS.isdir(source) else source


class AvazuReader(RowReader):
    """Rows of an Avazu CSV file.

    Args:
        source: a file or a folder holding ``train.csv``.
        labelled: ``False`` for ``test.csv`` (no ``click`` column).
        skip_bad_rows: drop and count bad rows instead of raising.
    """

    dataset = "avazu"
    sparse_fields = CAT_FIELDS + HOUR_FIELDS
    user_fields = ["device_id", "device_ip", "device_model", "device_type", "device_conn_type"]
    time_ordered = True

    def __init__(self, source: str, *, labelled: bool = True, skip_bad_rows: bool = False, **limits: int) -> None:
        super().__init__(source, labelled=labelled, skip_bad_rows=skip_bad_rows, **limits)
        self.path = avazu_file(source)
        with open_file(self.path) as f, naming(self.path):
            header = f.readline().rstrip(b"\r\n").decode("ascii", errors="replace").split(",")
        self.header = header
        required = (["click"] if labelled else []) + ["hour"] + CAT_FIELDS
        missing = [c for c in required if c not in header]
        unknown = [c for c in header if c not in required + ["id", "click"]]
        if missing or unknown or len(set(header)) != len(header):
            raise ValueError(
                f"{self.path}:1: header {header} does not match Avazu's columns: missing {missing}, "
                f"unknown {unknown} (expected id, {'click, ' if labelled else ''}hour, {', '.join(CAT_FIELDS)})"
            )
        self.column = {name: i for i, name in enumerate(header)}

    def plan(self, chunk_bytes: int) -> List[Chunk]:
        return plan_chunks([self.path], chunk_bytes, header=True)

    def parse(self, chunk: Chunk, data: Optional[bytes]) -> RawRows:
        table = split_table(
            read_chunk(chunk, data), chunk, b",", ", ".join(self.header), len(self.header), self.skip_bad_rows,
            **self.limits,
        )
        labels = parse_labels(table, self.column["click"], "click") if self.labelled else None
        hours = parse_ints(table, self.column["hour"], "hour", allow_missing=False)
        hh, weekday, ok = hour_fields(np.nan_to_num(hours).astype(np.int64))
        tokens = table.tokens[:, self.column["hour"]]
        table.checker.flag_field(~ok & ~np.isnan(hours), "hour", tokens, "is not a YYMMDDHH hour")
        cats = table.tokens[:, [self.column[c] for c in CAT_FIELDS]]
        derived = np.stack([hh.astype("S2"), weekday.astype("S1")], axis=1)
        sparse = np.concatenate([token_keys(cats), token_keys(derived)], axis=1)
        return table.finish(labels, np.zeros((len(table.rows), 0)), sparse)
