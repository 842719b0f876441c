"""The serving artifact's packed vocabularies: lossless for any keys, refused when damaged, and small."""

import zlib

import numpy as np
import pytest

from iarm_torchrec.data.vocab import token_keys
from iarm_torchrec.inference.packed_keys import pack_keys, unpack_keys

# Bytes per key of pack_keys on 200,000 random 8-hex-character tokens (Criteo's categorical values look
# like "68fd1e64"): 2.45 over seeds 0-2 (zlib 1.2.13); a million such tokens pack to 2.10. The .npy took 8.
HEX_BYTES_PER_KEY = 2.7


def _hex_vocabulary(n: int, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).integers(0, 2**32, n)
    return np.unique(token_keys(np.array([b"%08x" % v for v in values])))


@pytest.mark.parametrize(
    "keys",
    [
        np.zeros(0, np.uint64),
        np.array([1], np.uint64),
        np.array([2**64 - 1], np.uint64),
        np.array([1, 2**63, 2**64 - 2, 2**64 - 1], np.uint64),
        np.unique(token_keys(np.array([b"98107-4317", b"a much longer token than eight bytes", b"Comedy", b"1"]))),
        np.unique(token_keys(np.array([b"long-token-%09d" % i for i in range(5000)]))),  # hashed: any 64 bits
        np.array([7, 3, 7, 0], np.uint64),  # unsorted, repeated, zero: packed all the same
    ],
    ids=["empty", "single", "max", "near-2^64", "mixed-tokens", "hashed", "unsorted"],
)
def test_unpack_gives_back_the_keys(keys: np.ndarray) -> None:
    unpacked = unpack_keys(pack_keys(keys))
    assert unpacked.dtype == np.uint64 and np.array_equal(unpacked, keys)


def test_the_documented_two_lines_decode_without_this_package() -> None:
    """docs/serving.md's decoding, with numpy and zlib only."""
    keys = _hex_vocabulary(1000)
    blob = pack_keys(keys)
    planes = np.frombuffer(zlib.decompress(blob), np.uint8).reshape(8, -1)
    assert np.array_equal(planes.T.copy().view("<u8").ravel(), keys)


def test_damaged_or_foreign_bytes_are_refused() -> None:
    blob = pack_keys(_hex_vocabulary(1000))
    with pytest.raises(ValueError, match="not a u64le-byteplanes-zlib packing"):
        unpack_keys(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="are not 8 planes"):
        unpack_keys(zlib.compress(b"12345"))
    with pytest.raises(TypeError, match="1-d uint64"):
        pack_keys(np.array([1, 2], np.int64))


def test_a_criteo_like_vocabulary_packs_to_a_quarter_of_its_npy() -> None:
    keys = _hex_vocabulary(200_000)
    per_key = len(pack_keys(keys)) / len(keys)
    print(f"{per_key:.3f} bytes per key ({len(keys):,} keys)")
    assert per_key < HEX_BYTES_PER_KEY
