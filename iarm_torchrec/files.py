"""Writing files so that a reader never sees half of one: write to a temporary name, rename.

Every file the package leaves behind (settings, metrics, specs, shards' index, exports,
reports, plots) goes through :func:`atomic_write_bytes` / :func:`atomic_write_text` /
:func:`atomic_write_json`, or through :func:`atomic_path` for writers that want a path
(``torch.save``, ``numpy.save``, matplotlib). The temporary name is hidden (``.NAME.PID.tmp``)
and unique per process, so two writers never share one, and it is removed when the write fails.

Example::

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write_json(d / "metrics.json", {"auc": 0.8, "loss": float("nan")}).name
    'metrics.json'
    >>> (d / "metrics.json").read_text()
    '{\\n  "auc": 0.8,\\n  "loss": null\\n}\\n'
    >>> sorted(p.name for p in d.iterdir())
    ['metrics.json']
"""

import contextlib
import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]
"""A path given as ``str`` or any ``os.PathLike``."""


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    remove it (a file, or a folder the block made there) when the block raises. The parent
    folder is created."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as error:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise disk_full(final) from error
        raise


def disk_full(path: PathLike) -> OSError:
    """The error of a write to ``path`` that ran out of space: ``disk full while writing PATH``."""
    return OSError(errno.ENOSPC, f"disk full while writing {path}", str(path))


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None``, so that the JSON is strict
    (no bare ``NaN`` / ``Infinity``, which strict parsers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def atomic_write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented strict JSON (non-finite floats as ``null``) atomically."""
    return atomic_write_text(path, json.dumps(strict_json(data), indent=2, allow_nan=False) + "\n")
