"""Bad input: an error naming file, line and field, or (skip_bad_rows=True) a counted skip; never a shift."""

from pathlib import Path
from typing import List

import numpy as np
import pytest

from iarm_torchrec.data import read_part
from iarm_torchrec.data.builtin import builtin_schema
from iarm_torchrec.data.preprocess import preprocess
from iarm_torchrec.data.spec import SPEC_FILE


CAT_FIELDS = [f.name for f in builtin_schema("avazu").fields if f.derive is None]  # Avazu's columns besides id, click, hour


def row(label: str = "0", ints: List[str] = None, cats: List[str] = None) -> str:
    ints = ints if ints is not None else [str(i) for i in range(13)]
    cats = cats if cats is not None else [f"{j:08x}" for j in range(26)]
    return "\t".join([label] + ints + cats)


def criteo(tmp_path: Path, lines: List[str], name: str = "train.txt") -> str:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def run(src: str, tmp_path: Path, dataset: str = "criteo", **options):
    return preprocess(dataset, src, str(tmp_path / "out"), workers=1, **options)


def test_wrong_column_count(tmp_path: Path) -> None:
    src = criteo(tmp_path, [row(), row(), row(cats=[f"{j:08x}" for j in range(25)])])
    with pytest.raises(ValueError, match=r"train.txt:3: expected 40 tab-separated columns \(label, I1, .*C26\), found 39"):
        run(src, tmp_path)
    assert not (tmp_path / "out" / SPEC_FILE).exists()  # no dataset marked complete


def test_shifted_columns_that_cancel_out_are_still_caught(tmp_path: Path) -> None:
    # line 2 has one column too few and line 3 one too many: the total count matches, rows do not
    src = criteo(tmp_path, [row(), row(ints=[str(i) for i in range(12)]), row(ints=[str(i) for i in range(14)])])
    with pytest.raises(ValueError, match=r"train.txt:2: expected 40 .*found 39"):
        run(src, tmp_path)


def test_non_integer_field(tmp_path: Path) -> None:
    ints = [str(i) for i in range(13)]
    ints[4] = "abc"
    src = criteo(tmp_path, [row()] * 1233 + [row(ints=ints)])
    with pytest.raises(ValueError, match=r"train.txt:1234: field I5: 'abc' is not a number"):
        run(src, tmp_path)
    for text in ("inf", "nan"):  # not a number either (a missing value is an empty field)
        ints[4] = text
        src = criteo(tmp_path, [row(ints=ints)])
        with pytest.raises(ValueError, match=rf"train.txt:1: field I5: '{text}' is not a number"):
            run(src, tmp_path)


def test_bad_label(tmp_path: Path) -> None:
    src = criteo(tmp_path, [row(), row(label="2")])
    with pytest.raises(ValueError, match=r"train.txt:2: field label: '2' is not 0 or 1"):
        run(src, tmp_path)


def test_undecodable_bytes(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    cats = [f"{j:08x}" for j in range(26)]
    path.write_bytes((row() + "\n").encode() + (row(cats=cats[:2] + ["\udcff"] + cats[3:]) + "\n").encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=r"train.txt:2: field C3: b'\\xff' is not UTF-8 text \(undecodable bytes\)"):
        run(str(path), tmp_path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(ValueError, match=r"train.txt: empty file \(no data rows\)"):
        run(str(tmp_path / "train.txt"), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"nope.txt: no such file"):
        run(str(tmp_path / "nope.txt"), tmp_path)
    (tmp_path / "a.csv").write_text("id,click,hour," + ",".join(CAT_FIELDS) + "\n")
    with pytest.raises(ValueError, match=r"a.csv: empty file \(no data rows after the header line\)"):
        run(str(tmp_path / "a.csv"), tmp_path, "avazu")


def test_avazu_bad_header_and_hour(tmp_path: Path) -> None:
    header = ["id", "click", "hour"] + CAT_FIELDS
    good = ["1", "0", "14102100"] + ["1"] * 21
    (tmp_path / "a.csv").write_text(",".join(header[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"a.csv:1: columns \['C21'\] that the schema reads are missing"):
        run(str(tmp_path / "a.csv"), tmp_path, "avazu")
    bad = list(good)
    bad[2] = "14133100"
    (tmp_path / "b.csv").write_text("\n".join(",".join(r) for r in (header, good, bad)) + "\n")
    with pytest.raises(ValueError, match=r"b.csv:3: field hour: '14133100' is not a time in the format '%y%m%d%H'"):
        run(str(tmp_path / "b.csv"), tmp_path, "avazu")


def movielens(tmp_path: Path, ratings: str, users: str = "1::F::1::10::48067\n") -> str:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "users.dat").write_text(users)
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n")
    (folder / "ratings.dat").write_text(ratings)
    return str(folder)


def test_movielens_bad_lines(tmp_path: Path) -> None:
    src = movielens(tmp_path, "1::1::5::0\n1::1::5\n")
    with pytest.raises(ValueError, match=r"ratings.dat:2: expected 4 '::'-separated columns \(user_id, movie_id, rating, timestamp\), found 3"):
        run(src, tmp_path, "movielens-1m")


@pytest.mark.parametrize(
    "ratings, message",
    [
        ("1::1::five::0\n", r"ratings.dat:1: field rating: 'five' is not an integer"),
        ("1::1::5::0\n1::1::9::0\n", r"ratings.dat:2: field rating: '9' is not a rating in 1..5"),
        ("1::7::5::0\n", r"ratings.dat:1: field movie_id: '7' is not a movie of .*movies.dat"),
    ],
)
def test_movielens_bad_ratings(tmp_path: Path, ratings: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(movielens(tmp_path, ratings), tmp_path, "movielens-1m")


def test_movielens_undecodable_users(tmp_path: Path) -> None:
    src = movielens(tmp_path, "1::1::5::0\n")
    (Path(src) / "users.dat").write_bytes(b"1::F::1::10::48067\n2::M::1::10::4\xfe067\n")
    with pytest.raises(ValueError, match=r"users.dat:2: field zip: b'4\\xfe067' is not ASCII text"):
        run(src, tmp_path, "movielens-1m")


def test_skip_bad_rows_counts_and_records(tmp_path: Path) -> None:
    ints = [str(i) for i in range(13)]
    ints[4] = "abc"
    lines = [row(label=str(i % 2)) for i in range(20)]
    lines[3] = row(ints=ints)  # non-integer
    lines[7] = "\t".join(lines[7].split("\t")[:30])  # too few columns
    lines[11] = row(label="x")  # bad label
    src = criteo(tmp_path, lines)
    spec = run(src, tmp_path, skip_bad_rows=True, min_count=1)
    assert sum(spec.rows.values()) == 17
    assert spec.options["skipped_rows"] == 3
    assert any("train.txt:4: field I5: 'abc'" in m for m in spec.options["skipped_examples"])
    assert any("train.txt:8: expected 40" in m for m in spec.options["skipped_examples"])
    labels = np.concatenate([read_part(p).labels for p in sorted((tmp_path / "out").glob("*/part-*"))])
    assert len(labels) == 17  # the rest parsed whole, none shifted
