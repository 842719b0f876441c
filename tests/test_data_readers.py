"""Readers of the original formats on the real samples in ../shared/data (skipped where absent)."""

from pathlib import Path
from typing import List

import numpy as np
import pytest

from conftest import shared_data
from iarm_torchrec.data.builtin import builtin_files
from iarm_torchrec.data.movielens import MovieLensReader, year_token
from iarm_torchrec.data.preprocess import make_reader
from iarm_torchrec.data.rows import RawRows, RowReader
from iarm_torchrec.data.vocab import token_keys

# Counted once with: awk -F'\t' '{n++; s+=$1} END {print n, s}' criteo-kaggle-10k/train.txt  ->  10000 2182
CRITEO_10K_ROWS, CRITEO_10K_CLICKS = 10_000, 2_182


def read_all(reader: RowReader, chunk_bytes: int = 1 << 20) -> List[RawRows]:
    return [reader.parse(chunk, None) for chunk in reader.plan(chunk_bytes)]


def test_criteo_10k_rows_and_clicks() -> None:
    path = shared_data("criteo-kaggle-10k") / "train.txt"
    parts = read_all(make_reader("criteo", str(path)), chunk_bytes=300_000)  # several chunks
    assert len(parts) > 1
    assert sum(len(p) for p in parts) == CRITEO_10K_ROWS
    assert sum(float(p.labels.sum()) for p in parts) == CRITEO_10K_CLICKS
    rows = np.concatenate([p.rows for p in parts])
    np.testing.assert_array_equal(rows, np.arange(CRITEO_10K_ROWS))  # row index = line index, across chunks
    first = parts[0]
    # line 1: 0  1 1 5 0 1382 4 15 2 181 1 2 <empty> 2  68fd1e64 80e26c9b ...
    np.testing.assert_array_equal(first.dense[0, :12], [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, np.nan])
    assert first.dense[0, 12] == 2
    assert first.sparse[0, 0] == token_keys(np.array([b"68fd1e64"]))[0]
    assert first.sparse.shape == (len(first), 26) and first.dense.shape == (len(first), 13)


def test_criteo_unlabelled_test_file(tmp_path: Path) -> None:
    lines = (shared_data("criteo-kaggle-10k") / "train.txt").read_bytes().splitlines()[:50]
    (tmp_path / "test.txt").write_bytes(b"".join(line.split(b"\t", 1)[1] + b"\n" for line in lines))
    labelled = read_all(make_reader("criteo", str(shared_data("criteo-kaggle-10k") / "train.txt")))[0]
    (unlabelled,) = read_all(make_reader("criteo", str(tmp_path / "test.txt"), labelled=False))
    assert unlabelled.labels is None and len(unlabelled) == 50
    np.testing.assert_array_equal(unlabelled.sparse, labelled.sparse[:50])
    np.testing.assert_array_equal(unlabelled.dense, labelled.dense[:50])


def test_criteo_folder_reads_day_files_in_day_order(tmp_path: Path) -> None:
    for day in (10, 2, 0):
        (tmp_path / f"day_{day}").write_text("")
    assert [Path(p).name for p in builtin_files("criteo", str(tmp_path))] == ["day_0", "day_2", "day_10"]


@pytest.mark.parametrize("field_set", ["paper", "ids"])
def test_movielens_1m_protocol(field_set: str) -> None:
    reader = MovieLensReader(str(shared_data("movielens-1m")), field_set=field_set)
    (rows,) = read_all(reader)
    assert len(rows) == 739_012
    assert int(rows.labels.sum()) == 575_281
    values, lengths = rows.multi_hot["genres"]
    assert lengths.min() == 1 and lengths.max() == 6 and len(values) == lengths.sum()
    assert rows.sparse.shape == (739_012, len(reader.one_hot_fields))
    # user 1 (F, age 1, occupation 10, zip 48067) rated movie 1 (Toy Story (1995), Animation|Children's|Comedy) 5
    assert rows.lines[0] == 1 and rows.labels[0] == 1
    first = dict(zip(reader.one_hot_fields, rows.sparse[0]))
    assert first["gender"] == token_keys(np.array([b"F"]))[0]
    assert first["zip"] == token_keys(np.array([b"48067"]))[0]
    np.testing.assert_array_equal(values[:3], token_keys(np.array([b"Animation", b"Children's", b"Comedy"])))
    if field_set == "paper":
        assert reader.dense_fields == ["timestamp"] and rows.dense.shape == (739_012, 1)
        assert first["year"] == token_keys(np.array([b"1995"]))[0]
        assert reader.user_fields == ["gender", "age", "occupation", "zip"]
    else:
        assert rows.dense.shape == (739_012, 0)
        assert first["movie_id"] == token_keys(np.array([b"1"]))[0]
        assert reader.user_fields == ["user_id", "gender", "age", "occupation", "zip"]


def test_movielens_year_buckets() -> None:
    assert [year_token(y) for y in (1919, 1965, 1969, 1970, 2000)] == [b"1910s", b"1960s", b"1960s", b"1970", b"2000"]


def test_avazu_sample_and_hour_fields(tmp_path: Path) -> None:
    reader = make_reader("avazu", str(shared_data("avazu-sample") / "train.csv"))
    (rows,) = read_all(reader)
    assert reader.dataset == "avazu" and reader.sparse_fields[-2:] == ["hour_of_day", "weekday"]
    assert len(rows) == 100 and int(rows.labels.sum()) == 20  # 20 clicks: cut -d, -f2 | sort | uniq -c
    assert rows.sparse.shape == (100, 21 + 2) and rows.dense.shape == (100, 0)
    # row 1: hour 14102100 = 2014-10-21 00:00, a Tuesday -> hour_of_day 0, weekday 1 (0 = Monday)
    assert rows.sparse[0, -2] == token_keys(np.array([b"0"]))[0]
    assert rows.sparse[0, -1] == token_keys(np.array([b"1"]))[0]
    assert rows.sparse[0, 0] == token_keys(np.array([b"1005"]))[0]  # C1
    assert rows.sparse[0, reader.sparse_fields.index("site_id")] == token_keys(np.array([b"1fbe01fe"]))[0]
    # more hours, columns in another order, the id dropped; 14022900 (29 February 2014) is no date
    header = ["hour", "click"] + reader.sparse_fields[:-2] + ["id"]
    hours = ["14102100", "14102913", "14103123", "14022900"]
    (tmp_path / "a.csv").write_text("\n".join([",".join(header)] + [",".join([h, "0"] + ["1"] * 22) for h in hours]) + "\n")
    (rows,) = read_all(make_reader("avazu", str(tmp_path / "a.csv"), skip_bad_rows=True))
    assert rows.lines.tolist() == [2, 3, 4] and rows.skipped == 1 and "a.csv:5: field hour: '14022900'" in rows.skipped_examples[0]
    assert rows.sparse[:, -2].tolist() == token_keys(np.array([b"0", b"13", b"23"])).tolist()
    assert rows.sparse[:, -1].tolist() == token_keys(np.array([b"1", b"2", b"4"])).tolist()


def test_token_keys_exact_short_and_stable_long() -> None:
    short = token_keys(np.array([b"68fd1e64", b"", b"a"]))
    assert short.tolist() == [int.from_bytes(b"68fd1e64", "little"), 0, 97]
    long = token_keys(np.array([b"98107-4317", b"98107-4318"]))
    assert long[0] != long[1] and 0 not in long.tolist()
    wide = token_keys(np.array([b"98107-4317", b"x" * 40]))  # same token in a wider array: same key
    assert wide[0] == long[0]
