"""The built-in datasets Criteo and Avazu: schemas shipped in ``schemas/``, read by the tabular path.

Everything about their rows is in the schema files (:mod:`iarm_torchrec.data.schema`), read by
:class:`~iarm_torchrec.data.tabular.TabularReader` like any user's schema:

* ``schemas/criteo.yaml``: Criteo display-advertising logs (Kaggle ``train.txt``, its unlabelled
  ``test.txt``, Terabyte ``day_N``): headerless TSV, ``label``, integer fields ``I1..I13`` (NaN
  where empty, ``log1p`` by default) and categorical ``C1..C26``;
* ``schemas/avazu.yaml``: Avazu mobile-ad clicks (Kaggle ``train.csv`` / ``test.csv``): CSV with
  a header (columns found by name, so their order does not matter; a missing or unknown column
  is an error), ``id`` dropped, ``click`` the label, ``hour`` (``YYMMDDHH``) derived into
  ``hour_of_day`` (0-23) and ``weekday`` (0 = Monday), and the file order is time order.

What a schema cannot say, and so stays here, is which files a *folder* source means: Criteo's
``day_0, day_1, ..., day_23`` in day order (numeric order, which a glob's name order is not:
``day_10`` sorts before ``day_2``), else its ``train.txt``; Avazu's ``train.csv``; each also
``.gz``. A file source is read as it is.
"""

import re
from pathlib import Path
from typing import Any, List

from iarm_torchrec.data.rows import PATHS, find_file
from iarm_torchrec.data.schema import TabularSchema, load_schema

BUILTIN = ("criteo", "avazu")
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
_DAY = re.compile(r"^day_(\d+)(\.gz)?$")
_FOLDER_FILE = {"criteo": "train.txt", "avazu": "train.csv"}


def builtin_schema(dataset: str) -> TabularSchema:
    """The shipped schema of a built-in dataset.

    >>> s = builtin_schema("avazu")
    >>> s.format, s.label.column, [f.name for f in s.fields][-2:]
    ('csv', 'click', ['hour_of_day', 'weekday'])
    """
    if dataset not in BUILTIN:
        raise ValueError(f"{dataset!r} is not a built-in dataset with a schema; those are {BUILTIN}")
    return load_schema(SCHEMA_DIR / f"{dataset}.yaml")


def builtin_files(dataset: str, source: str) -> List[str]:
    """The files of a built-in dataset's source: the file itself, or what its folder holds.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> for day in (10, 2, 0):
    ...     _ = open(os.path.join(folder, f"day_{day}"), "w").write("")
    >>> [os.path.basename(p) for p in builtin_files("criteo", folder)]
    ['day_0', 'day_2', 'day_10']
    """
    if dataset not in BUILTIN:
        raise ValueError(f"{dataset!r} is not a built-in dataset with a schema; those are {BUILTIN}")
    if not PATHS.isdir(source):
        if not PATHS.exists(source):
            raise FileNotFoundError(f"{source}: no such file or folder")
        return [source]
    if dataset == "criteo":
        days = sorted((int(m.group(1)), name) for name in PATHS.ls(source) if (m := _DAY.match(name.split("/")[-1])))
        if days:
            return [f"{source.rstrip('/')}/{name.split('/')[-1]}" for _, name in days]
    return [find_file(source, [_FOLDER_FILE[dataset]])]


def builtin_reader(dataset: str, source: str, **options: Any):  # type: ignore[no-untyped-def]
    """The :class:`~iarm_torchrec.data.tabular.TabularReader` of a built-in dataset's ``source``
    (``options``: ``labelled``, ``skip_bad_rows``, the length limits); its rows keep the dataset's
    name (``spec.dataset``)."""
    from iarm_torchrec.data.tabular import TabularReader

    return TabularReader(source, schema=builtin_schema(dataset), paths=builtin_files(dataset, source), dataset=dataset, **options)
