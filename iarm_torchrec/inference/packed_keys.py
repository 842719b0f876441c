"""A vocabulary's keys as the serving artifact stores them: byte planes, zlib-compressed.

A vocabulary is a sorted ``uint64`` array (:class:`~iarm_torchrec.data.vocab.Vocabulary`: key
``keys[i]`` -> id ``i + 1``); as ``.npy`` it costs 8 bytes a key. Packed (:func:`pack_keys`):

1. the keys' little-endian bytes, transposed into 8 byte planes (``8 x N`` ``uint8``: plane ``j``
   holds byte ``j`` of every key). Sorted keys share their high bytes with their neighbours, so the
   high planes are long runs; a token's key is its bytes (``data/vocab.py:token_keys``), so the low
   planes hold one character each and take only the few values of the tokens' alphabet;
2. ``zlib.compress`` of the planes at level 9 (deflate: in every Python, and in C++ with zlib).

Decoding needs numpy and zlib only: ``docs/serving.md`` gives a client without this package the
two lines of :func:`unpack_keys`.

Measured (``benchmarks/vocab_size_bench.py``, ``benchmarks/results/vocab_size.md``): 2.1 bytes a key
for a million Criteo-like 8-hex tokens (the information bound of such a set is 1.69), 0.5-1.5 on
MovieLens-1M's, against 8. First differences of the keys before the planes (smaller numbers, but their
borrows turn a token's characters into any byte) packed 13% larger on the hex tokens; bz2 and lzma
packed 9-10% smaller but unpack 5-7x (lzma) and 15-20x (bz2) slower, and are missing from some Python builds.

>>> keys = np.array([97, 98, 2**64 - 1], dtype=np.uint64)
>>> unpack_keys(pack_keys(keys)).tolist() == keys.tolist()
True
"""

import zlib

import numpy as np

KEYS_FORMAT = "u64le-byteplanes-zlib"  # recorded in the artifact's serving.json; a new packing needs a new name


def pack_keys(keys: np.ndarray) -> bytes:
    """A 1-d ``uint64`` array (sorted, for a small result) -> its packed bytes."""
    keys = np.asarray(keys)
    if keys.ndim != 1 or keys.dtype.kind != "u" or keys.dtype.itemsize != 8:
        raise TypeError(f"pack_keys needs a 1-d uint64 array, got {keys.dtype} of shape {keys.shape}")
    planes = np.ascontiguousarray(keys.astype("<u8").view(np.uint8).reshape(-1, 8).T)
    return zlib.compress(planes.tobytes(), 9)


def unpack_keys(blob: bytes) -> np.ndarray:
    """Packed bytes (:func:`pack_keys`) -> the ``uint64`` keys; raises ``ValueError`` on bytes that
    are not a packing (a damaged stream, a length that is not 8 planes)."""
    try:
        raw = zlib.decompress(blob)
    except zlib.error as error:
        raise ValueError(f"not a {KEYS_FORMAT} packing: {error}") from None
    if len(raw) % 8:
        raise ValueError(f"not a {KEYS_FORMAT} packing: {len(raw)} bytes are not 8 planes")
    planes = np.frombuffer(raw, np.uint8).reshape(8, -1)
    return planes.T.copy().view("<u8").ravel().astype(np.uint64, copy=False)  # native order on big-endian machines
