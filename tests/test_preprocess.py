"""Preprocessing into the layout of data/spec.py: vocabularies, splits, numeric transforms, gzip, encode."""

import gzip
from collections import Counter
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from conftest import shared_data
from iarm_torchrec.data import read_part
from iarm_torchrec.data.preprocess import encode, preprocess
from iarm_torchrec.data.spec import SPLITS, FeatureSpec
from iarm_torchrec.data.splits import SplitConfig

CRITEO_10K_CLICKS = 2_182  # see tests/test_data_readers.py for how it was counted


def load_split(data_dir: Path, split: str) -> Dict[str, np.ndarray]:
    """All parts of a split concatenated, by file name (``labels``, ``dense``, ``sparse``, ...)."""
    read = [read_part(p) for p in sorted((data_dir / split).glob("part-*"))]
    if not read:
        return {}
    columns = {"labels": [r.labels for r in read], "dense": [r.dense for r in read], "sparse": [r.sparse for r in read]}
    for name in read[0].multi_hot:
        columns[f"{name}.values"] = [r.multi_hot[name][0] for r in read]
        columns[f"{name}.lengths"] = [r.multi_hot[name][1] for r in read]
    return {n: np.concatenate(arrays) for n, arrays in columns.items()}


def criteo_lines(n: int, c1=lambda i: f"{i:08x}", c2=lambda i: f"{i % 7:08x}") -> List[str]:
    """Criteo-format rows: I1 = i, C1 = c1(i), C2 = c2(i), other fields constant."""
    return [
        "\t".join([str(i % 2), str(i)] + ["1"] * 12 + [c1(i), c2(i)] + ["abcdef01"] * 24) for i in range(n)
    ]


def write(path: Path, lines: List[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_criteo_10k_layout_and_spec(tmp_path: Path) -> None:
    src = str(shared_data("criteo-kaggle-10k") / "train.txt")
    spec = preprocess("criteo", src, str(tmp_path / "d"), workers=1, chunk_mb=0.5)
    assert spec == FeatureSpec.load(tmp_path / "d")
    assert sum(spec.rows.values()) == 10_000
    assert sum(spec.options["positives"].values()) == CRITEO_10K_CLICKS
    assert [f.name for f in spec.sparse] == [f"C{i}" for i in range(1, 27)]
    assert spec.dense == [f"I{i}" for i in range(1, 14)] and spec.user_fields == spec.dense
    assert spec.options["min_count"] == 10 and spec.options["numeric"] == "log1p"
    for split in SPLITS:
        parts = sorted((tmp_path / "d" / split).glob("part-*"))
        assert len(parts) == 5  # 2.4 MB in 0.5 MiB chunks
        data = load_split(tmp_path / "d", split)
        n = spec.rows[split]
        assert data["labels"].shape == (n,) and data["labels"].dtype == np.float32
        assert data["dense"].shape == (n, 13) and data["dense"].dtype == np.float32
        assert data["sparse"].shape == (n, 26) and data["sparse"].dtype == np.int32
        assert int(data["labels"].sum()) == spec.options["positives"][split]
        sizes = np.array([f.vocab_size for f in spec.sparse])
        assert (data["sparse"] >= 0).all() and (data["sparse"] < sizes).all()
        assert (data["dense"] >= 0).all()  # log1p of clamped counts
    assert (tmp_path / "d" / "vocab" / "C3.npy").is_file()
    # row 0 of the file (in train by the seed-0 split): I5 = 1382 -> log1p(1382), I12 missing -> 0
    assert SplitConfig().assign(np.array([0]), np.array([0]), 10_000)[0] == 0
    train = load_split(tmp_path / "d", "train")
    np.testing.assert_allclose(train["dense"][0, [4, 11]], [np.log1p(1382), 0.0], rtol=1e-6)


def test_vocab_from_train_only(tmp_path: Path) -> None:
    src = write(tmp_path / "train.txt", criteo_lines(400))  # C1 unique per row
    spec = preprocess("criteo", src, str(tmp_path / "d"), min_count=1, workers=1)
    assert spec.sparse[0].vocab_size == spec.rows["train"] + 1
    train, valid, test = (load_split(tmp_path / "d", s)["sparse"][:, 0] for s in SPLITS)
    assert (train > 0).all() and len(np.unique(train)) == len(train)
    assert (valid == 0).all() and (test == 0).all()  # seen only outside train: OOV


def test_min_count(tmp_path: Path) -> None:
    c2 = lambda i: f"{min(i, 3):08x}"  # value 0,1,2 once each, value 3 for every later row
    src = write(tmp_path / "train.txt", criteo_lines(50, c2=c2))
    spec = preprocess("criteo", src, str(tmp_path / "d"), min_count=2, valid_ratio=0, test_ratio=0, workers=1)
    assert spec.rows == {"train": 50, "valid": 0, "test": 0}
    c2_ids = load_split(tmp_path / "d", "train")["sparse"][:, 1]
    assert spec.sparse[1].vocab_size == 2  # OOV + the one value seen twice or more
    assert c2_ids[:3].tolist() == [0, 0, 0] and (c2_ids[3:] == 1).all()
    counts = Counter(c2(i) for i in range(50))
    assert sum(1 for c in counts.values() if c >= 2) + 1 == spec.sparse[1].vocab_size


def test_hash_buckets(tmp_path: Path) -> None:
    src = write(tmp_path / "train.txt", criteo_lines(300))
    spec = preprocess("criteo", src, str(tmp_path / "d"), hash_buckets={"C1": 16}, min_count=1, workers=1)
    assert spec.sparse[0].vocab_size == 17 and spec.options["hash_buckets"] == {"C1": 16}
    assert not (tmp_path / "d" / "vocab" / "C1.npy").exists() and (tmp_path / "d" / "vocab" / "C2.npy").exists()
    ids = np.concatenate([load_split(tmp_path / "d", s)["sparse"][:, 0] for s in SPLITS])
    assert ids.min() >= 1 and ids.max() <= 16 and len(np.unique(ids)) > 12  # 300 values spread over 16 buckets
    spec_all = preprocess("criteo", src, str(tmp_path / "h"), hash_buckets=16, workers=1)
    assert not (tmp_path / "h" / "vocab").exists()  # nothing to count: pass 1 skipped
    assert all(f.vocab_size == 17 for f in spec_all.sparse)
    c1 = np.concatenate([load_split(tmp_path / "h", s)["sparse"][:, 0] for s in SPLITS])
    np.testing.assert_array_equal(np.sort(c1), np.sort(ids))  # same hashing, whatever the other fields


def test_split_proportions_and_seed(tmp_path: Path) -> None:
    src = str(shared_data("criteo-kaggle-10k") / "train.txt")
    a = preprocess("criteo", src, str(tmp_path / "a"), test_ratio=0.3, valid_ratio=0.1, seed=3, workers=1)
    b = preprocess("criteo", src, str(tmp_path / "b"), test_ratio=0.3, valid_ratio=0.1, seed=3, workers=1)
    c = preprocess("criteo", src, str(tmp_path / "c"), test_ratio=0.3, valid_ratio=0.1, seed=4, workers=1)
    for split, share in zip(SPLITS, (0.6, 0.1, 0.3)):
        sigma = (share * (1 - share) / 10_000) ** 0.5
        assert abs(a.rows[split] / 10_000 - share) < 4 * sigma
    assert a.rows == b.rows and a.rows != c.rows
    for split in SPLITS:
        for name, array in load_split(tmp_path / "a", split).items():
            np.testing.assert_array_equal(array, load_split(tmp_path / "b", split)[name])


def test_time_split_keeps_file_order(tmp_path: Path) -> None:
    src = shared_data("criteo-kaggle-10k") / "train.txt"
    spec = preprocess("criteo", str(src), str(tmp_path / "d"), split="time", workers=1, chunk_mb=0.5)
    assert spec.rows == {"train": 8000, "valid": 1000, "test": 1000}
    labels = np.array([float(line.split(b"\t", 1)[0]) for line in src.read_bytes().splitlines()])
    got = np.concatenate([load_split(tmp_path / "d", s)["labels"] for s in SPLITS])
    np.testing.assert_array_equal(got, labels)


def test_gzip_input_gives_identical_output(tmp_path: Path) -> None:
    src = shared_data("criteo-kaggle-10k") / "train.txt"
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    preprocess("criteo", str(src), str(tmp_path / "plain"), workers=1, chunk_mb=0.5)
    spec = preprocess("criteo", str(gz), str(tmp_path / "gz"), workers=1, chunk_mb=0.5)
    assert spec.options["chunks"] == 5
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*.npy"))
    assert files == sorted(p.relative_to(tmp_path / "gz") for p in (tmp_path / "gz").rglob("*.npy"))
    for f in files:
        assert (tmp_path / "plain" / f).read_bytes() == (tmp_path / "gz" / f).read_bytes(), f


@pytest.mark.slow
def test_two_workers_give_identical_output(tmp_path: Path) -> None:
    src = str(shared_data("criteo-kaggle-10k") / "train.txt")
    preprocess("criteo", src, str(tmp_path / "one"), workers=1, chunk_mb=0.25)
    spec = preprocess("criteo", src, str(tmp_path / "two"), workers=2, chunk_mb=0.25)
    assert spec.options["workers"] == 2
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npy"))
    assert len(files) > 30
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_encode_new_file_with_existing_vocab(tmp_path: Path) -> None:
    src = shared_data("criteo-kaggle-10k") / "train.txt"
    spec = preprocess("criteo", str(src), str(tmp_path / "d"), workers=1)
    unlabelled = tmp_path / "test.txt"
    unlabelled.write_bytes(b"".join(line.split(b"\t", 1)[1] + b"\n" for line in src.read_bytes().splitlines()))
    enc = encode(str(unlabelled), str(tmp_path / "d"), str(tmp_path / "e"), labelled=False, workers=1)
    assert enc.rows == {"test": 10_000} and not enc.options["labelled"]
    assert [f.vocab_size for f in enc.sparse] == [f.vocab_size for f in spec.sparse]
    encoded = load_split(tmp_path / "e", "test")
    assert (encoded["labels"] == 0).all()
    codes = SplitConfig().assign(np.arange(10_000), np.arange(10_000), 10_000)
    for code, split in enumerate(SPLITS):  # same ids and numbers as the dataset's own rows, in file order
        mine = load_split(tmp_path / "d", split)
        np.testing.assert_array_equal(encoded["sparse"][codes == code], mine["sparse"])
        np.testing.assert_array_equal(encoded["dense"][codes == code], mine["dense"])
    assert FeatureSpec.load(tmp_path / "e") == enc


def test_encoding_a_few_chunks_runs_them_on_threads_with_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ENCODE_CHUNKS_PER_WORKER chunks a worker, encode spreads the chunks over threads of
    its own process (no spawned worker, which would import torch first) and writes exactly what
    one thread writes."""
    import threading

    import iarm_torchrec.data.preprocess as preprocess_module
    from iarm_torchrec.data.synthetic import TSV_DIR, make_synthetic_dataset

    data = Path(make_synthetic_dataset(tmp_path / "syn", rows=4000, seed=0))
    source = str(data / TSV_DIR / "train.txt")
    encode(source, str(data), str(tmp_path / "one"), workers=1, chunk_mb=0.1)

    def no_processes(*args: object, **kwargs: object) -> None:
        raise AssertionError("encode spawned worker processes for a few chunks")

    monkeypatch.setattr(preprocess_module.multiprocessing, "get_context", no_processes)
    encoders = set()
    encode_chunk = preprocess_module._encode_chunk

    def recording(*args: object):  # type: ignore[no-untyped-def]
        encoders.add(threading.current_thread().name)
        return encode_chunk(*args)

    monkeypatch.setattr(preprocess_module, "_encode_chunk", recording)
    spec = encode(source, str(data), str(tmp_path / "two"), workers=2, chunk_mb=0.1)
    assert spec.rows == {"test": 4000} and len(encoders) == 2 and threading.current_thread().name not in encoders
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.npy"))
    assert len(files) >= 3 * 8  # several parts, each with its arrays
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_movielens_1m_paper_and_constant_timestamp(tmp_path: Path) -> None:
    spec = preprocess("movielens-1m", str(shared_data("movielens-1m")), str(tmp_path / "d"), test_ratio=0.2)
    assert sum(spec.rows.values()) == 739_012 and sum(spec.options["positives"].values()) == 575_281
    genres = next(f for f in spec.sparse if f.name == "genres")
    assert genres.multi_hot and genres.max_length == 6 and genres.vocab_size == 19  # 18 genres + OOV
    assert spec.dense == ["timestamp"] and spec.options["numeric_stats"]["timestamp"]["std"] == 0.0
    test = load_split(tmp_path / "d", "test")
    assert abs(len(test["labels"]) / 739_012 - 0.2) < 0.005
    assert (test["dense"] == 0).all()  # constant timestamps -> 0, no division by zero
    assert test["genres.lengths"].min() == 1 and test["genres.lengths"].sum() == len(test["genres.values"])
    assert spec.to_feature_config(8).user_feature_names == ["gender", "age", "occupation", "zip"]


def write_movielens(folder: Path, ratings: List[str]) -> str:
    folder.mkdir()
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Comedy\n2::Métropolis (1927)::Sci-Fi\n".encode("latin-1"))
    (folder / "ratings.dat").write_text("".join(r + "\n" for r in ratings))
    return str(folder)


def test_movielens_real_timestamps_standardized_and_time_split(tmp_path: Path) -> None:
    # 10 ratings with distinct timestamps, written out of time order
    stamps = [978300760 + 1000 * k for k in (5, 1, 9, 0, 7, 3, 8, 2, 6, 4)]
    ratings = [f"{1 + k % 2}::{1 + k % 3 // 2}::{5 if k % 4 else 1}::{t}" for k, t in enumerate(stamps)]
    src = write_movielens(tmp_path / "ml", ratings)
    spec = preprocess("movielens-1m", src, str(tmp_path / "d"), split="time", valid_ratio=0.2, test_ratio=0.2)
    assert spec.rows == {"train": 6, "valid": 2, "test": 2}
    stats = spec.options["numeric_stats"]["timestamp"]
    train_stamps = np.sort(stamps)[:6]
    assert stats["mean"] == pytest.approx(train_stamps.mean()) and stats["std"] == pytest.approx(train_stamps.std())
    dense = {s: load_split(tmp_path / "d", s)["dense"][:, 0] for s in SPLITS}
    assert dense["train"].max() < dense["valid"].min() and dense["valid"].max() < dense["test"].min()
    assert dense["train"].mean() == pytest.approx(0, abs=1e-6)
    assert next(f for f in spec.sparse if f.name == "year").vocab_size >= 2  # 1995 and/or the 1920s bucket


def test_refuses_to_overwrite_without_flag(tmp_path: Path) -> None:
    src = write(tmp_path / "train.txt", criteo_lines(20))
    preprocess("criteo", src, str(tmp_path / "d"), workers=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        preprocess("criteo", src, str(tmp_path / "d"), workers=1)
    assert preprocess("criteo", src, str(tmp_path / "d"), workers=1, overwrite=True).rows["train"] > 0


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="valid_ratio \\+ test_ratio"):
        SplitConfig(valid_ratio=0.5, test_ratio=0.5)
    with pytest.raises(ValueError, match="unknown dataset"):
        preprocess("kdd12", "x", "y")
    with pytest.raises(ValueError, match="field_set applies to movielens-1m only"):
        preprocess("criteo", "x", "y", field_set="ids")
