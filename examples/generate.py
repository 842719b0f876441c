"""Small generated files in the layouts of ``examples/*/schema.yaml`` (for trying them, the tests and
the benchmark): ``python examples/generate.py FOLDER [ROWS]`` writes both.

The clicks follow a simple rule (a user likes some categories and tags) so that a model learns
something; the values are synthetic, not real data.
"""

import sys
from pathlib import Path

import numpy as np


def criteo_x1(folder: Path, rows: int = 3000, seed: int = 0) -> Path:
    """``train.csv`` / ``valid.csv`` / ``test.csv`` with the header ``label,I1..I13,C1..C26``."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = ",".join(["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)])
    for split, share in (("train", 0.8), ("valid", 0.1), ("test", 0.1)):
        n = max(int(rows * share), 10)
        ints = rng.poisson(3.0, size=(n, 13))
        cats = rng.zipf(1.5, size=(n, 26)) % 500
        logit = 0.3 * (ints[:, 0] - 3) + np.where(cats[:, 0] % 3 == 0, 1.0, -0.5)
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
        lines = [header]
        for i in range(n):
            ivals = ["" if rng.random() < 0.1 else str(v) for v in ints[i]]
            cvals = ["" if rng.random() < 0.05 else f"{(v * 2654435761) % 2**32:08x}" for v in cats[i]]
            lines.append(",".join([str(label[i])] + ivals + cvals))
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def click_log_table(rows: int, seed: int = 0, start: int = 0):  # type: ignore[no-untyped-def]
    """A pyarrow table of the click log's columns (rows ``start .. start + rows`` of one stream)."""
    import pyarrow as pa

    rng = np.random.default_rng(seed + start)
    users = rng.integers(0, max(rows // 20, 50), rows)
    items = rng.integers(0, max(rows // 5, 100), rows)
    category = items % 37
    n_tags = rng.integers(0, 6, rows)
    tag_values = rng.integers(0, 200, int(n_tags.sum()))
    offsets = np.concatenate([[0], np.cumsum(n_tags)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), pa.array([f"t{v}" for v in tag_values], pa.string()))
    seconds = 1_700_000_000 + np.sort(rng.integers(0, 30 * 86400, rows)) + start
    likes = (users % 7 == category % 7) | (users % 5 == 0)
    clicked = (rng.random(rows) < np.where(likes, 0.6, 0.1)).astype(np.int8)
    return pa.table({
        "session_id": pa.array(rng.integers(0, 2**62, rows)),
        "event_time": pa.array(seconds * 1_000_000, pa.timestamp("us")),
        "user_id": pa.array([f"u{u}" for u in users]),
        "age": pa.array((users % 6 * 10 + 18).astype(np.int32)),
        "gender": pa.array(np.where(users % 2 == 0, "f", "m")),
        "item_id": pa.array(items),
        "category": pa.array([f"cat{c}" for c in category]),
        "tags": tags,
        "price": pa.array(np.round(rng.lognormal(3, 1, rows), 2)),
        "clicked": pa.array(clicked),
    })  # fmt: skip


def click_log(folder: Path, rows: int = 3000, files: int = 2, row_group: int = 1000, seed: int = 0) -> Path:
    """``clicks-00000.parquet`` ... (``files`` of them, ``row_group`` rows per row group)."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-rows // files)
    for k in range(files):
        n = min(per, rows - k * per)
        with pq.ParquetWriter(folder / f"clicks-{k:05d}.parquet", click_log_table(1, seed).schema) as writer:
            for start in range(0, n, row_group):
                writer.write_table(click_log_table(min(row_group, n - start), seed, k * per + start), row_group_size=row_group)
    return folder


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "example-data")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    print(criteo_x1(out / "criteo_x1", n), click_log(out / "click_log", n))
