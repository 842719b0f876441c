"""Checksums that tell a damaged file from a good one: sha256 of files (in chunks) and of tensors.

Checkpoints list every file with its size and sha256 in their manifest (``progress.json``,
written last); exports carry the sha256 of their content. :func:`verify_files` checks sizes
first (cheap, catches truncation) and then hashes, naming the first file that differs.

Example::

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.bin").write_bytes(b"abc")
    >>> manifest = file_manifest(d, ["a.bin"])
    >>> manifest["a.bin"]["sha256"][:12]
    'ba7816bf8f01'
    >>> verify_files(d, manifest) is None
    True
    >>> _ = (d / "a.bin").write_bytes(b"abd")
    >>> verify_files(d, manifest)
    '...a.bin: checksum mismatch (the file changed after it was written)'
"""

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

import numpy as np

CHUNK_BYTES = 8 << 20


def file_sha256(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """The sha256 of a file, read in chunks (bounded memory for large tables)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk_bytes)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path, names: Iterable[str]) -> Dict[str, Dict[str, Any]]:
    """``{name: {"size": bytes, "sha256": hex}}`` for files of ``folder``."""
    return {name: {"size": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)} for name in names}


def verify_files(folder: Path, manifest: Mapping[str, Any]) -> Optional[str]:
    """``None`` when every listed file is intact, else a message naming the first bad file.

    ``manifest`` values are ``{"size", "sha256"}`` dicts, or bare sizes (older checkpoints)."""
    entries = {name: value if isinstance(value, dict) else {"size": value} for name, value in manifest.items()}
    for name, entry in entries.items():  # sizes first: cheap, and catches every truncation
        file = folder / name
        actual = file.stat().st_size if file.is_file() else None
        if actual != entry.get("size"):
            state = "missing" if actual is None else f"{actual} bytes, {entry.get('size')} were written"
            return f"{file}: damaged checkpoint file ({state})"
    for name, entry in entries.items():
        if "sha256" in entry and file_sha256(folder / name) != entry["sha256"]:
            return f"{folder / name}: checksum mismatch (the file changed after it was written)"
    return None


def sha256_of_tree(value: Any) -> str:
    """A sha256 over nested dicts / lists of tensors, arrays, bytes and plain JSON-like data,
    independent of dict order (keys sorted)."""
    digest = hashlib.sha256()
    _update(digest, value)
    return digest.hexdigest()


def _update(digest: "hashlib._Hash", value: Any) -> None:
    import torch

    if isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(repr(key).encode())
            _update(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _update(digest, item)
        digest.update(b"]")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"tensor{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        digest.update(f"array{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (bytes, bytearray)):
        digest.update(bytes(value))
    else:
        digest.update(repr(value).encode())
