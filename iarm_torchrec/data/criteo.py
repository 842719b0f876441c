"""Criteo display-advertising logs: Kaggle ``train.txt`` / ``test.txt`` and Terabyte ``day_N``.

One sample per line, tab-separated: ``label`` (0/1; absent in Kaggle's unlabelled ``test.txt``),
13 integer fields ``I1..I13`` and 26 categorical fields ``C1..C26`` (8 hex digits), any of them
empty when missing. Plain or gzip, any iopath path. A folder source reads its ``day_0, day_1, ...``
files in day order (time order), else its ``train.txt``.

Numbers come out raw (NaN where missing); preprocessing applies ``log(1 + max(x, 0))``.
"""

import re
from typing import List, Optional

import numpy as np

from iarm_torchrec.data.rows import PATHS, Chunk, RawRows, RowReader, find_file, parse_ints, parse_labels, plan_chunks
from iarm_torchrec.data.rows import read_chunk, split_table
from iarm_torchrec.data.vocab import token_keys

INT_FIELDS = [f"I{i}" for i in range(1, 14)]
CAT_FIELDS = [f"C{i}" for i in range(1, 27)]
_DAY = re.compile(r"^day_(\d+)(\.gz)?$")


def criteo_files(source: str) -> List[str]:
    """The files of a Criteo source: the file itself, a folder's ``day_N`` files by day, or its ``train.txt``."""
    if not PATHS.isdir(source):
        if not PATHS.exists(source):
            raise FileNotFoundError(f"{source}: no such file or folder")
        return [source]
    days = sorted((int(m.group(1)), name) for name in PATHS.ls(source) if (m := _DAY.match(name.split("/")[-1])))
    if days:
        return [f"{source.rstrip('/')}/{name.split('/')[-1]}" for _, name in days]
    return [find_file(source, ["train.txt"])]


class CriteoReader(RowReader):
    """Rows of Criteo TSV files.

    Args:
        source: a file or a folder (see :func:`criteo_files`).
        labelled: ``False`` for Kaggle's ``test.txt`` (39 columns, no label).
        skip_bad_rows: drop and count bad rows instead of raising.

    Example (a row with I2 missing and C1..C26 present)::

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "train.txt")
        >>> _ = open(path, "w").write("1\\t5\\t\\t" + "\\t".join(["3"] * 11) + "\\t" + "\\t".join(["68fd1e64"] * 26) + "\\n")
        >>> reader = CriteoReader(path)
        >>> (chunk,) = reader.plan(1 << 20)
        >>> rows = reader.parse(chunk, None)
        >>> rows.labels.tolist(), rows.dense[0, :3].tolist(), rows.sparse.shape
        ([1.0], [5.0, nan, 3.0], (1, 26))
    """

    dataset = "criteo"
    sparse_fields = CAT_FIELDS
    dense_fields = INT_FIELDS
    # Criteo's fields are anonymised and the paper does not say which describe the user; the
    # integer fields are mostly counts of the user's past activity (Criteo's description), so they
    # are the default user fields of Eq. 5. Override with ``user_fields=...``.
    user_fields = INT_FIELDS
    time_ordered = True

    def plan(self, chunk_bytes: int) -> List[Chunk]:
        return plan_chunks(criteo_files(self.source), chunk_bytes, header=False)

    def parse(self, chunk: Chunk, data: Optional[bytes]) -> RawRows:
        first = 1 if self.labelled else 0
        names = (["label"] if self.labelled else []) + INT_FIELDS + CAT_FIELDS
        table = split_table(
            read_chunk(chunk, data),
            chunk,
            b"\t",
            columns=", ".join(names),
            n_columns=len(names),
            skip=self.skip_bad_rows,
            **self.limits,
        )
        labels = parse_labels(table, 0) if self.labelled else None
        dense = np.stack([parse_ints(table, first + j, name) for j, name in enumerate(INT_FIELDS)], axis=1)
        sparse = token_keys(table.tokens[:, first + len(INT_FIELDS) :])
        return table.finish(labels, dense, sparse)
