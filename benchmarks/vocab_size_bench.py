"""Bytes per vocabulary id in the serving artifact, before (``.npy``: 8 bytes a key) and after packing.

The serving artifact (``iarm export --serving``) carries one vocabulary per categorical field;
format 2 stores each as :func:`~iarm_torchrec.inference.packed_keys.pack_keys` (byte planes, zlib)
instead of the preprocessed ``.npy``. On real vocabularies, preprocessed here with the package's
defaults:

* MovieLens-1M, ``--field-set ids`` and ``paper`` (``../shared/data/movielens-1m``);
* Criteo's 10,000 real rows (``../shared/data/criteo-kaggle-10k``), at its default ``min_count``
  10 and at 1 (every value kept: a sparse sample of Criteo's values);
* a synthetic Criteo-size field: ~1M distinct random 8-hex-character tokens (what Criteo's
  categorical values look like, e.g. ``68fd1e64``), the large-vocabulary case;

it reports the vocabularies' bytes (the files, and what they add to a TorchScript zip: headers
and alignment included) per id and against the tables they index: TorchRec's row-wise formats at
D = 16 take 32 bytes a row in int8 (and fp16), 16 in int4, for ``ids + 1`` rows a field (id 0 is
the out-of-vocabulary row). Then the packings that were measured against the chosen one: the
keys' first differences before the planes, bz2 and lzma instead of zlib, ``np.savez_compressed``
of the keys; and the information bound of the synthetic field (``log2 C(16^8, n)`` bits: any
encoding of a set of n such tokens needs that many on average).

Usage (~1 minute, one core)::

    python benchmarks/vocab_size_bench.py [--synthetic-tokens 1000000]

Results: ``benchmarks/results/vocab_size.json`` and ``.md``.
"""

import argparse
import bz2
import io
import json
import lzma
import math
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
RESULTS = HERE / "results"
INT8_ROW, INT4_ROW = 32, 16  # bytes of a D = 16 row: int8 16 + fp16 scale/bias, 16-byte aligned; int4 8 + 4 -> 16


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def zip_bytes(extra: Dict[str, bytes]) -> int:
    """What ``extra`` adds to a TorchScript archive (``torch.jit.save``'s zip: headers, 64-byte alignment)."""
    module = torch.jit.script(_Identity())
    with tempfile.TemporaryDirectory() as tmp:
        sizes = []
        for files in ({}, extra):
            path = Path(tmp) / "m.pt"
            torch.jit.save(module, str(path), _extra_files=files)
            sizes.append(path.stat().st_size)
    return sizes[1] - sizes[0]


def _planes(keys: np.ndarray) -> bytes:
    return np.ascontiguousarray(keys.astype("<u8").view(np.uint8).reshape(-1, 8).T).tobytes()


def _unplanes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, np.uint8).reshape(8, -1).T.copy().view("<u8").ravel()


def _savez(keys: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, keys=keys)
    return out.getvalue()


def _diff(keys: np.ndarray) -> np.ndarray:
    return np.diff(keys, prepend=np.uint64(0))


# the measured packings: name -> (keys -> bytes, bytes -> keys); the first is the artifact's (pack_keys)
ALTERNATIVES: Dict[str, Tuple[Callable[[np.ndarray], bytes], Callable[[bytes], np.ndarray]]] = {
    "byte planes + zlib 9 (pack_keys, chosen)": (lambda k: zlib.compress(_planes(k), 9), lambda b: _unplanes(zlib.decompress(b))),
    "first differences + byte planes + zlib 9": (
        lambda k: zlib.compress(_planes(_diff(k)), 9),
        lambda b: np.cumsum(_unplanes(zlib.decompress(b)), dtype=np.uint64),
    ),
    "byte planes + bz2 9": (lambda k: bz2.compress(_planes(k), 9), lambda b: _unplanes(bz2.decompress(b))),
    "byte planes + lzma 9e": (
        lambda k: lzma.compress(_planes(k), preset=9 | lzma.PRESET_EXTREME),
        lambda b: _unplanes(lzma.decompress(b)),
    ),
    "np.savez_compressed(keys)": (_savez, lambda b: np.load(io.BytesIO(b))["keys"]),
}


def vocabulary_sets(work: Path, synthetic_tokens: int) -> Dict[str, Dict[str, np.ndarray]]:
    """Set name -> field -> sorted keys, each set preprocessed by the package (one worker)."""
    from iarm_torchrec.data.preprocess import preprocess
    from iarm_torchrec.data.vocab import token_keys

    runs = {
        "movielens-1m ids": ("movielens-1m", SHARED / "movielens-1m", {"field_set": "ids"}),
        "movielens-1m paper": ("movielens-1m", SHARED / "movielens-1m", {"field_set": "paper"}),
        "criteo-kaggle-10k (min_count 10)": ("criteo", SHARED / "criteo-kaggle-10k" / "train.txt", {}),
        "criteo-kaggle-10k (min_count 1)": ("criteo", SHARED / "criteo-kaggle-10k" / "train.txt", {"min_count": 1}),
    }
    sets: Dict[str, Dict[str, np.ndarray]] = {}
    for i, (name, (dataset, source, options)) in enumerate(runs.items()):
        if not source.exists():
            print(f"{name}: {source} is absent, skipped", flush=True)
            continue
        out = work / f"set-{i}"
        preprocess(dataset, str(source), str(out), workers=1, overwrite=True, **options)
        sets[name] = {p.stem: np.load(p) for p in sorted((out / "vocab").glob("*.npy"))}
    values = np.random.default_rng(0).integers(0, 16**8, synthetic_tokens)
    tokens = np.array([b"%08x" % v for v in values])
    sets[f"synthetic {synthetic_tokens:,} random 8-hex tokens"] = {"C": np.unique(token_keys(tokens))}
    return sets


def measure(fields: Dict[str, np.ndarray]) -> Dict[str, Any]:
    from iarm_torchrec.inference.packed_keys import pack_keys, unpack_keys

    ids = sum(len(k) for k in fields.values())
    npy = {}
    for name, keys in fields.items():
        buffer = io.BytesIO()
        np.save(buffer, keys)
        npy[f"iarm/data/vocab/{name}.npy"] = buffer.getvalue()
    packed = {f"iarm/data/vocab/{name}.planes.zlib": pack_keys(keys) for name, keys in fields.items()}
    t = time.perf_counter()
    unpacked = {name: unpack_keys(packed[f"iarm/data/vocab/{name}.planes.zlib"]) for name in fields}
    unpack_s = time.perf_counter() - t
    assert all(np.array_equal(unpacked[name], keys) for name, keys in fields.items())
    rows = ids + len(fields)
    result: Dict[str, Any] = {
        "fields": len(fields),
        "ids": ids,
        "largest_field_ids": max(len(k) for k in fields.values()),
        "int8_table_bytes": rows * INT8_ROW,
        "int4_table_bytes": rows * INT4_ROW,
        "unpack_ms": round(1000 * unpack_s, 1),
    }
    for label, files in (("before", npy), ("after", packed)):
        file_bytes = sum(len(b) for b in files.values())
        in_zip = zip_bytes(files)
        result[label] = {
            "file_bytes": file_bytes,
            "artifact_bytes": in_zip,
            "bytes_per_id": round(file_bytes / ids, 3),
            "artifact_bytes_per_id": round(in_zip / ids, 3),
            "share_of_int8_table": round(in_zip / (rows * INT8_ROW), 4),
            "share_of_int4_table": round(in_zip / (rows * INT4_ROW), 4),
        }
    result["alternatives"] = {}
    for name, (pack, unpack) in ALTERNATIVES.items():
        blobs = {field: pack(keys) for field, keys in fields.items()}
        t = time.perf_counter()
        decoded = {field: unpack(blob) for field, blob in blobs.items()}
        seconds = time.perf_counter() - t
        assert all(np.array_equal(decoded[field], keys) for field, keys in fields.items()), name
        result["alternatives"][name] = {"bytes_per_id": round(sum(map(len, blobs.values())) / ids, 3), "unpack_ms": round(1000 * seconds, 1)}
    return result


def information_bound(n: int, universe: int = 16**8) -> float:
    """Bytes per element of the smallest encoding of an n-element subset of ``universe`` values (on average)."""
    bits = (math.lgamma(universe + 1) - math.lgamma(n + 1) - math.lgamma(universe - n + 1)) / math.log(2)
    return bits / 8 / n


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-tokens", type=int, default=1_000_000)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from _common import machine

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vocab-size-") as tmp:
        sets = {name: measure(fields) for name, fields in vocabulary_sets(Path(tmp), args.synthetic_tokens).items()}
    synthetic = next(name for name in sets if name.startswith("synthetic"))
    report = {
        "command": " ".join(["python benchmarks/vocab_size_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine(),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "row_bytes": {"int8_d16": INT8_ROW, "int4_d16": INT4_ROW},
        "sets": sets,
        "synthetic_information_bound_bytes_per_id": round(information_bound(sets[synthetic]["ids"]), 3),
        "duration_s": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab_size.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "vocab_size.md").write_text(markdown(report))
    print(markdown(report))
    return 0


def markdown(report: Dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Vocabulary bytes in the serving artifact (`benchmarks/vocab_size_bench.py`)", "",
        f"Command: `{report['command']}`; commit {m['git_commit']}; numpy {m['versions']['numpy']}, zlib {report['zlib']}.", "",
        "Before: serving format 1, each vocabulary an `.npy` of its sorted `uint64` keys. After: format 2, "
        "`pack_keys` (byte planes, zlib 9). *artifact* bytes are what the files add to a TorchScript zip (headers and "
        "64-byte alignment included); the tables are int8 / int4 at D = 16 (32 / 16 bytes a row, ids + 1 rows a field).", "",
        "| vocabularies | fields | ids (largest field) | bytes/id before | after | artifact bytes before | after "
        "| share of int8 table before | after | share of int4 table after | unpack ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, s in report["sets"].items():
        b, a = s["before"], s["after"]
        lines.append(
            f"| {name} | {s['fields']} | {s['ids']:,} ({s['largest_field_ids']:,}) | {b['artifact_bytes_per_id']:.2f} "
            f"| {a['artifact_bytes_per_id']:.2f} | {b['artifact_bytes']:,} | {a['artifact_bytes']:,} "
            f"| {b['share_of_int8_table']:.1%} | {a['share_of_int8_table']:.1%} | {a['share_of_int4_table']:.1%} | {s['unpack_ms']} |"
        )
    names = list(next(iter(report["sets"].values()))["alternatives"])
    lines += [
        "",
        f"Synthetic field's information bound: {report['synthetic_information_bound_bytes_per_id']:.2f} bytes/id "
        "(no encoding of such a set does better on average).",
        "",
        "## Packings measured (file bytes per id without the zip's overhead; ms to unpack every field)",
        "",
        "| vocabularies | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, s in report["sets"].items():
        cells = [f"{s['alternatives'][n]['bytes_per_id']:.2f} ({s['alternatives'][n]['unpack_ms']} ms)" for n in names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
