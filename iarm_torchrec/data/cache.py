"""The preprocessed data of a run: made once by the main rank, cached, found again by every rerun.

What to preprocess is a :class:`DataSource` (the dataset, its raw source, the preprocessing
options, where caches live), so that the data side needs nothing of training's settings. The
cache folder's name carries a hash of what the data depends on (dataset, source, preprocessing
options), so a rerun with the same source skips preprocessing and a change of options makes a
new folder. The main rank preprocesses into a temporary folder and renames it when complete;
the other ranks wait for the folder (on storage all ranks share), so nobody reads half-written
data.

Example::

    >>> from pathlib import Path
    >>> a = DataSource("criteo", "/raw/criteo", Path("/cache"), {"min_count": 5}, synthetic_rows=1000)
    >>> cache_dir(a).parent, cache_dir(a).name.startswith("criteo-")
    (PosixPath('/cache'), True)
    >>> cache_dir(a) == cache_dir(DataSource("criteo", "/raw/criteo", Path("/cache"), {"min_count": 6}, 1000))
    False
"""

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from iarm_torchrec.data.preprocess import preprocess
from iarm_torchrec.data.spec import SPEC_FILE
from iarm_torchrec.data.synthetic import GROUND_TRUTH_FILE, make_synthetic_dataset

logger = logging.getLogger(__name__)

_POLL_S = 2.0
SYNTHETIC_SEED = 0
"""The synthetic dataset's own seed: runs with different training seeds see the same data."""


@dataclass(frozen=True)
class DataSource:
    """What to preprocess, and where its cache lives.

    Args:
        dataset: ``synthetic`` or one of :data:`iarm_torchrec.data.preprocess.DATASETS`.
        data_dir: the raw source (file or folder); unused by ``synthetic``.
        cache_root: the folder that holds the cached preprocessed datasets.
        options: keyword options of :func:`~iarm_torchrec.data.preprocess.preprocess`
            (``field_set``, ``min_count``, ...); unused by ``synthetic``.
        synthetic_rows: rows of the ``synthetic`` dataset.
    """

    dataset: str
    data_dir: Optional[str]
    cache_root: Path
    options: Dict[str, Any]
    synthetic_rows: int


def cache_key(source: DataSource) -> Dict[str, Any]:
    """What the preprocessed data depends on."""
    if source.dataset == "synthetic":
        key: Dict[str, Any] = {"dataset": "synthetic", "rows": source.synthetic_rows, "seed": SYNTHETIC_SEED}
        if source.options:
            key["options"] = dict(source.options)
        return key
    return {
        "dataset": source.dataset,
        "source": str(Path(source.data_dir or "").resolve()),
        "options": dict(source.options),
    }


def cache_dir(source: DataSource) -> Path:
    """``cache_root/<dataset>-<hash of cache_key>``: the preprocessed folder of ``source``."""
    key = json.dumps(cache_key(source), sort_keys=True)
    return Path(source.cache_root) / f"{source.dataset}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def prepare_data(source: DataSource, is_main: bool, barrier: Callable[[], None]) -> Path:
    """The preprocessed folder (holding ``spec.json``) of ``source``, made by the main rank
    (``is_main``) when it is not cached yet; every rank returns after ``barrier()``.

    The other ranks poll for the folder before the barrier: preprocessing a large dataset
    outlasts a collective's timeout (if the main rank fails, the launcher stops them)."""
    target = cache_dir(source)
    if is_main:
        if not (target / SPEC_FILE).is_file():
            _build(source, target)
    else:
        waited = 0.0
        while not (target / SPEC_FILE).is_file():
            time.sleep(_POLL_S)
            waited += _POLL_S
            if waited % 300 < _POLL_S:
                logger.warning("still waiting for the main rank to preprocess into %s", target)
    barrier()
    return target


def ground_truth_file(data_dir: Path) -> Optional[Path]:
    """The synthetic dataset's ``ground_truth.json`` (Bayes-optimal scores), when there is one."""
    path = data_dir / GROUND_TRUTH_FILE
    return path if path.is_file() else None


def _build(source: DataSource, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    logger.info("preprocessing %s into %s", source.dataset, target)
    if source.dataset == "synthetic":
        if "field_set" in source.options:
            raise ValueError("field_set applies to movielens-1m only, not to the synthetic dataset")
        make_synthetic_dataset(tmp, rows=source.synthetic_rows, seed=SYNTHETIC_SEED, **source.options)
    else:
        preprocess(source.dataset, source.data_dir, tmp, **source.options)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
