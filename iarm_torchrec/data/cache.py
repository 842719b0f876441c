"""The preprocessed data of a run: made once by the main rank, cached, found again by every rerun.

What to preprocess is a :class:`DataSource` (the dataset, its raw source, the preprocessing
options, where caches live), so that the data side needs nothing of training's settings. The
cache folder's name carries a hash of what the data depends on (dataset, source, preprocessing
options), so a rerun with the same source skips preprocessing and a change of options makes a
new folder. The main rank preprocesses into a temporary folder and renames it when complete;
the other ranks wait for the folder (on storage all ranks share), so nobody reads half-written
data.

Example::

    >>> import tempfile
    >>> raw = Path(tempfile.mkdtemp()) / "train.txt"; _ = raw.write_text("1\\t2\\n")
    >>> a = DataSource("criteo", str(raw), Path("/cache"), {"min_count": 5}, synthetic_rows=1000)
    >>> cache_dir(a).parent, cache_dir(a).name.startswith("criteo-")
    (PosixPath('/cache'), True)
    >>> cache_dir(a) == cache_dir(DataSource("criteo", str(raw), Path("/cache"), {"min_count": 6}, 1000))
    False
    >>> before = cache_dir(a); _ = raw.write_text("0\\t3\\n")   # same path and size, new content
    >>> cache_dir(a) == before
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
from typing import Any, Callable, Dict, List, Optional

from iarm_torchrec.data.preprocess import preprocess
from iarm_torchrec.locks import folder_lock
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
        full_hash: identify the raw files by a sha256 of their whole content (slow for large
            files) instead of size, modification time and their first and last MiB.
    """

    dataset: str
    data_dir: Optional[str]
    cache_root: Path
    options: Dict[str, Any]
    synthetic_rows: int
    full_hash: bool = False


SOURCE_FILE = "source.json"
"""In each cache folder: its :func:`cache_key` (what it was made from)."""
FINGERPRINT_BYTES = 1 << 20
WAIT_FOR_OTHER_S = 24 * 3600.0


def source_files(dataset: str, source: str, schema: Optional[str] = None) -> List[Path]:
    """The raw files ``source`` of ``dataset`` is read from (as the dataset's reader finds them)."""
    if dataset == "tabular":
        from iarm_torchrec.data.tabular import tabular_source_files

        if schema is None:
            raise ValueError("dataset tabular needs a schema file (--schema FILE)")
        return [Path(p) for p in tabular_source_files(schema, source or None)]
    from iarm_torchrec.data.builtin import BUILTIN, builtin_files
    from iarm_torchrec.data.rows import find_file

    if dataset in BUILTIN:
        return [Path(p) for p in builtin_files(dataset, source)]
    if dataset == "movielens-1m":
        if not Path(source).is_dir():
            raise NotADirectoryError(f"{source}: expected the MovieLens-1M folder (users.dat, movies.dat, ratings.dat)")
        return [Path(find_file(source, [f"{name}.dat"])) for name in ("users", "movies", "ratings")]
    raise ValueError(f"unknown dataset {dataset!r}")


def file_identity(path: Path, full_hash: bool = False) -> Dict[str, Any]:
    """A raw file's identity: size, modification time (ns) and a content fingerprint (sha256 of
    the size and the first and last MiB; of the whole file with ``full_hash``)."""
    st = path.stat()
    digest = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as handle:
        if full_hash:
            for block in iter(lambda: handle.read(8 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(FINGERPRINT_BYTES))
            if st.st_size > FINGERPRINT_BYTES:
                handle.seek(max(st.st_size - FINGERPRINT_BYTES, FINGERPRINT_BYTES))
                digest.update(handle.read(FINGERPRINT_BYTES))
    kind = "sha256" if full_hash else "sha256_head_tail"
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, kind: digest.hexdigest()}


TIME_RULES_VERSION = 2
"""Bumped when :mod:`~iarm_torchrec.data.times` derives other values from the same rows, so that a
schema dataset cached under older rules is preprocessed again rather than served by other rules."""


def cache_key(source: DataSource) -> Dict[str, Any]:
    """What the preprocessed data depends on."""
    if source.dataset == "synthetic":
        key: Dict[str, Any] = {"dataset": "synthetic", "rows": source.synthetic_rows, "seed": SYNTHETIC_SEED}
        if source.options:
            key["options"] = dict(source.options)
        return key
    full = source.full_hash or os.environ.get("IARM_CACHE_FULL_HASH", "") not in ("", "0")
    schema = source.options.get("schema")
    files = source_files(source.dataset, source.data_dir or "", schema)
    if schema is not None:  # the schema's content, not only its path, decides what is read
        from iarm_torchrec.data.tabular import as_schema

        contents = as_schema(schema, source.data_dir if source.data_dir and Path(source.data_dir).is_dir() else None).to_dict()
        return {
            "dataset": source.dataset,
            "source": str(Path(source.data_dir or Path(schema).parent).resolve()),
            "options": dict(source.options),
            "schema_content": contents,
            # 2: a missing time derives missing parts (id 0), as online scoring does, not 1970's
            "time_rules": TIME_RULES_VERSION,
            "files": [file_identity(p, full) for p in files],
        }
    return {
        "dataset": source.dataset,
        "source": str(Path(source.data_dir or "").resolve()),
        "options": dict(source.options),
        "files": [file_identity(p, full) for p in files],
    }


def cache_dir(source: DataSource, key: Optional[Dict[str, Any]] = None) -> Path:
    """``cache_root/<dataset>-<hash of cache_key>``: the preprocessed folder of ``source``."""
    text = json.dumps(cache_key(source) if key is None else key, sort_keys=True)
    return Path(source.cache_root) / f"{source.dataset}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def why_new(source: DataSource, key: Dict[str, Any]) -> str:
    """Why ``source`` has no cache yet: the raw files that changed since an earlier cache of the
    same source and options, or that there is none."""
    if source.dataset == "synthetic":
        return "no cache of it yet"
    root = Path(source.cache_root)
    for old_file in sorted(root.glob(f"{source.dataset}-*/{SOURCE_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            old = json.loads(old_file.read_text())
        except (OSError, ValueError):
            continue
        if (old.get("source"), old.get("options")) != (key["source"], key["options"]):
            continue
        before = {f["path"]: f for f in old.get("files", [])}
        changes = []
        for f in key["files"]:
            was = before.get(f["path"])
            if was is None:
                changes.append(f"{f['path']} is new")
            elif was != f:
                what = [k for k in ("size", "mtime_ns", "sha256_head_tail", "sha256") if was.get(k) != f.get(k)]
                detail = f"size {was['size']} -> {f['size']} bytes" if "size" in what else ", ".join(what) + " differ"
                changes.append(f"{f['path']} changed ({detail})")
        changes += [f"{p} is gone" for p in before if p not in {f["path"] for f in key["files"]}]
        if changes:
            return f"the raw input changed since {old_file.parent} was made: {'; '.join(changes)}"
    return "no cache of it yet"


def prepare_data(source: DataSource, is_main: bool, barrier: Callable[[], None]) -> Path:
    """The preprocessed folder (holding ``spec.json``) of ``source``, made by the main rank
    (``is_main``) when it is not cached yet; every rank returns after ``barrier()``.

    The other ranks poll for the folder before the barrier: preprocessing a large dataset
    outlasts a collective's timeout (if the main rank fails, the launcher stops them)."""
    key = cache_key(source)
    target = cache_dir(source, key)
    if is_main:
        if not (target / SPEC_FILE).is_file():
            _build(source, target, key)
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


def _build(source: DataSource, target: Path, key: Dict[str, Any]) -> None:
    """Preprocess into ``target`` under its lock (``.NAME.lock`` beside it; another process
    building the same folder is waited for), through a temporary folder of this process."""
    lock_file = target.with_name(f".{target.name}.lock")
    with folder_lock(target, f"preprocessing {source.dataset}", lock_file=lock_file, wait_s=WAIT_FOR_OTHER_S):
        if (target / SPEC_FILE).is_file():  # another process made it while this one waited
            return
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        logger.info("preprocessing %s into %s (%s)", source.dataset, target, why_new(source, key))
        try:
            if source.dataset == "synthetic":
                if "field_set" in source.options:
                    raise ValueError("field_set applies to movielens-1m only, not to the synthetic dataset")
                make_synthetic_dataset(tmp, rows=source.synthetic_rows, seed=SYNTHETIC_SEED, **source.options)
            else:
                preprocess(source.dataset, source.data_dir, str(tmp), **source.options)
            (tmp / SOURCE_FILE).write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
