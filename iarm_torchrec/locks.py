"""One writer per folder: an exclusive lock file naming its owner (host and pid).

``iarm train --out RUN`` (rank 0), the data cache and ``iarm data ... OUT`` hold
``FOLDER/.iarm.lock`` while they write. A second writer gets :class:`FolderLocked` naming the
folder and the owner; a lock left by a process that died on this host (its pid is gone) is
stale and taken over with a warning. The lock file is created with ``O_EXCL``, which is atomic
on local file systems and NFSv3+.

Example::

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> with folder_lock(d, "training"):
    ...     try:
    ...         with folder_lock(d, "training"):
    ...             pass
    ...     except FolderLocked as error:
    ...         print(str(error).split(":")[1].strip().startswith("in use by"))
    True
"""

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from iarm_torchrec.files import PathLike

logger = logging.getLogger(__name__)

LOCK_FILE = ".iarm.lock"


class FolderLocked(RuntimeError):
    """Another live process writes into the folder."""


def _owner() -> Dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def read_owner(lock: Path) -> Optional[Dict[str, Any]]:
    """The owner recorded in a lock file (``None`` when it is gone or unreadable)."""
    try:
        data = json.loads(lock.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def acquire(folder: PathLike, purpose: str, lock_file: Optional[PathLike] = None, wait_s: float = 0.0) -> Path:
    """Take ``folder``'s lock (creating the folder); :class:`FolderLocked` when a live process
    holds it (after waiting up to ``wait_s`` seconds for it to let go). ``lock_file`` places the
    lock elsewhere than ``FOLDER/.iarm.lock`` (e.g. beside a folder that does not exist yet)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _acquire(Path(folder), purpose, Path(lock_file) if lock_file else None)
        except FolderLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _acquire(folder: Path, purpose: str, lock_file: Optional[Path]) -> Path:
    lock = lock_file or folder / LOCK_FILE
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = json.dumps({**_owner(), "purpose": purpose}).encode()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_owner(lock)
            if owner is None:  # being written this very moment, or garbage: look again
                time.sleep(0.1)
                owner = read_owner(lock)
            same_host = owner is not None and owner.get("host") == socket.gethostname()
            if owner is not None and same_host and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                logger.warning("%s: removing a stale lock of pid %s (no longer running)", folder, owner["pid"])
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            who = (
                f"pid {owner.get('pid')} on {owner.get('host')} ({owner.get('purpose', '?')}, since {owner.get('since', '?')})"
                if owner
                else "an unknown process"
            )
            raise FolderLocked(
                f"{folder}: in use by {who}; wait for it to finish, or give another folder "
                f"(if that process is gone, delete {lock})"
            ) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(me)
        return lock
    raise FolderLocked(f"{folder}: could not take the lock {lock}")


def release(lock: Path) -> None:
    """Remove a lock this process holds (a lock of another owner is left alone)."""
    owner = read_owner(lock)
    if owner is not None and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def folder_lock(folder: PathLike, purpose: str, lock_file: Optional[PathLike] = None, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold ``folder``'s lock for the block (see :func:`acquire`)."""
    lock = acquire(folder, purpose, lock_file, wait_s)
    try:
        yield lock
    finally:
        release(lock)
