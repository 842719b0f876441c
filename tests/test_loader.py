"""The batch loader: contents, per-rank slices, equal batch counts, seeded shuffle, resume."""

import importlib.util
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec.datasets.utils import Batch

from conftest import shared_data, write_preprocessed
from iarm_torchrec.data import read_part
from iarm_torchrec.data.loader import PADDING_LABEL, ShardedBatchLoader


def _reference(data_dir: Path, split: str) -> Dict[str, np.ndarray]:
    """The split's arrays concatenated over parts, read without the loader, by file name."""
    read = [read_part(p) for p in sorted((data_dir / split).glob("part-*"))]
    columns = {"labels.npy": [r.labels for r in read], "dense.npy": [r.dense for r in read], "sparse.npy": [r.sparse for r in read]}
    for name in read[0].multi_hot:
        columns[f"{name}.values.npy"] = [r.multi_hot[name][0] for r in read]
        columns[f"{name}.lengths.npy"] = [r.multi_hot[name][1] for r in read]
    return {file: np.concatenate(arrays) for file, arrays in columns.items()}


def _ids(loader: ShardedBatchLoader) -> List[int]:
    """Real sample ids (``dense[:, 0]``) of one pass, padding dropped."""
    ids: List[int] = []
    for batch in loader:
        real = batch.labels != PADDING_LABEL
        ids += batch.dense_features[real, 0].long().tolist()
    return ids


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("toy")
    write_preprocessed(data_dir, {"train": 103, "valid": 10}, rows_per_part=40)
    return data_dir


def test_batch_contents_match_the_shards(toy: Path) -> None:
    ref = _reference(toy, "train")
    starts = np.concatenate([[0], np.cumsum(ref["tags.lengths.npy"].astype(np.int64))])
    loader = ShardedBatchLoader(toy, "train", batch_size=16, shuffle=True, seed=3, prefetch=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 103 // 16
    for batch in batches:
        assert isinstance(batch, Batch)
        assert batch.dense_features.dtype == torch.float32 and batch.dense_features.shape == (16, 3)
        assert batch.labels.dtype == torch.float32 and batch.labels.shape == (16,)
        rows = batch.dense_features[:, 0].long().numpy()
        np.testing.assert_array_equal(batch.dense_features.numpy(), ref["dense.npy"][rows])
        np.testing.assert_array_equal(batch.labels.numpy(), ref["labels.npy"][rows])
        kjt = batch.sparse_features
        assert kjt.keys() == ["c0", "c1", "tags"] and kjt.stride() == 16
        assert kjt.values().dtype == torch.int32
        for j, key in enumerate(["c0", "c1"]):
            assert kjt[key].lengths().tolist() == [1] * 16
            np.testing.assert_array_equal(kjt[key].values().numpy(), ref["sparse.npy"][rows, j])
        tags = kjt["tags"]
        np.testing.assert_array_equal(tags.lengths().numpy(), ref["tags.lengths.npy"][rows])
        want = np.concatenate([ref["tags.values.npy"][starts[r] : starts[r + 1]] for r in rows])
        np.testing.assert_array_equal(tags.values().numpy(), want)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n,batch_size", [(103, 8), (10, 4), (2, 2)])
def test_eval_mode_yields_every_sample_once_with_equal_batch_counts(
    tmp_path: Path, world_size: int, n: int, batch_size: int
) -> None:
    write_preprocessed(tmp_path, {"test": n}, rows_per_part=7)
    loaders = [
        ShardedBatchLoader(tmp_path, "test", batch_size, rank, world_size, shuffle=True, seed=1, drop_last=False)
        for rank in range(world_size)
    ]
    counts = {len(loader) for loader in loaders}
    assert len(counts) == 1, f"unequal batch counts per rank: {counts}"
    seen: List[int] = []
    for loader in loaders:
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(b.labels.shape == (batch_size,) for b in batches)
        ids = _ids_of(batches)
        assert len(ids) == loader.num_real_rows
        seen += ids
    assert sorted(seen) == list(range(n))


def _ids_of(batches: List[Batch]) -> List[int]:
    return [int(b.dense_features[i, 0]) for b in batches for i in range(len(b.labels)) if b.labels[i] != PADDING_LABEL]


def test_padding_rows_are_marked_and_counted(toy: Path) -> None:
    loader = ShardedBatchLoader(toy, "valid", batch_size=4, drop_last=False)
    labels = torch.cat([b.labels for b in loader])
    assert len(labels) == 12 and loader.num_real_rows == 10
    assert (labels == PADDING_LABEL).sum() == 2 and (labels[:10] != PADDING_LABEL).all()


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_gives_full_disjoint_batches(toy: Path, world_size: int) -> None:
    loaders = [ShardedBatchLoader(toy, "train", 8, r, world_size, shuffle=True, seed=5) for r in range(world_size)]
    assert {len(loader) for loader in loaders} == {103 // (8 * world_size)}
    ids = [_ids(loader) for loader in loaders]
    flat = sum(ids, [])
    assert len(flat) == len(set(flat)) == len(loaders[0]) * 8 * world_size
    assert all(len(i) == len(loaders[0]) * 8 for i in ids)


def test_drop_last_needs_one_full_batch(toy: Path) -> None:
    with pytest.raises(ValueError, match="fewer than world_size \\* batch_size = 16"):
        ShardedBatchLoader(toy, "valid", batch_size=8, world_size=2, rank=1)


def test_shuffle_is_seeded_and_new_each_epoch(toy: Path) -> None:
    def epoch_ids(seed: int, epoch: int) -> List[int]:
        loader = ShardedBatchLoader(toy, "train", 8, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return _ids(loader)

    assert epoch_ids(7, 0) == epoch_ids(7, 0)
    assert epoch_ids(7, 0) != epoch_ids(7, 1)
    assert epoch_ids(7, 0) != epoch_ids(8, 0)
    plain = ShardedBatchLoader(toy, "train", 8)
    assert _ids(plain) == list(range(len(plain) * 8))
    # without set_epoch, a finished pass moves on to the next epoch's permutation
    loader = ShardedBatchLoader(toy, "train", 8, shuffle=True, seed=7)
    assert _ids(loader) == epoch_ids(7, 0) and loader.epoch == 1 and _ids(loader) == epoch_ids(7, 1)


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_at_batch_k_yields_the_tail_of_an_uninterrupted_epoch(toy: Path, prefetch: int) -> None:
    def loader() -> ShardedBatchLoader:
        return ShardedBatchLoader(toy, "train", 8, rank=1, world_size=2, shuffle=True, seed=2, prefetch=prefetch)

    full = loader()
    full.set_epoch(3)
    uninterrupted = _ids(full)

    first = loader()
    first.set_epoch(3)
    it = iter(first)
    for _ in range(2):
        next(it)
    assert first.epoch == 3
    del it

    resumed = loader()  # a new process resumes from the trainer's count of trained steps
    resumed.set_epoch(3, start_batch=2)
    assert _ids(resumed) == uninterrupted[2 * 8 :]
    direct = loader()
    direct.set_epoch(3, start_batch=4)
    assert _ids(direct) == uninterrupted[4 * 8 :]
    with pytest.raises(ValueError, match="start_batch must be in"):
        direct.set_epoch(3, start_batch=len(direct) + 1)


@pytest.mark.parametrize("shuffle", [False, True])
def test_training_step_k_is_the_same_global_batch_for_any_world_size(toy: Path, shuffle: bool) -> None:
    def global_batches(world_size: int) -> List[List[int]]:
        per_rank = [
            [_ids_of([b]) for b in ShardedBatchLoader(toy, "train", 24 // world_size, r, world_size, shuffle=shuffle, seed=4)]
            for r in range(world_size)
        ]
        return [sum((steps[k] for steps in per_rank), []) for k in range(len(per_rank[0]))]

    one = global_batches(1)
    assert len(one) == 103 // 24
    for world_size in (2, 3, 4):
        assert global_batches(world_size) == one


def test_prefetch_stops_with_an_abandoned_iterator_and_passes_errors_on(toy: Path) -> None:
    loader = ShardedBatchLoader(toy, "train", 4, prefetch=1)
    it = iter(loader)
    next(it)
    it.close()  # must not hang on the producer thread
    broken = ShardedBatchLoader(toy, "train", 4, prefetch=1)
    broken.data.labels.parts = []
    with pytest.raises(IndexError):
        next(iter(broken))


def test_bad_shards_are_named(tmp_path: Path) -> None:
    write_preprocessed(tmp_path, {"train": 6})
    np.save(tmp_path / "train" / "part-00000" / "dense.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(ValueError, match="part-00000/dense.npy: shape \\(5, 3\\), expected \\(6, 3\\)"):
        ShardedBatchLoader(tmp_path, "train", 2)
    with pytest.raises(FileNotFoundError, match="splits present: \\['train'\\]"):
        ShardedBatchLoader(tmp_path, "test", 2)


REAL = [
    ("criteo", "criteo-kaggle-10k"),
    ("movielens-1m", "movielens-1m"),
    ("avazu", "avazu-sample"),
]


@pytest.mark.data
@pytest.mark.parametrize("dataset,folder", REAL)
def test_real_data_batch_trains_iarm(tmp_path: Path, dataset: str, folder: str) -> None:
    source = shared_data(folder)
    if importlib.util.find_spec("iarm_torchrec.data.preprocess") is None:
        pytest.skip("iarm_torchrec.data.preprocess (the readers) is not written yet")
    from iarm_torchrec.data.preprocess import preprocess
    from iarm_torchrec.models.ctr_train import CTRTrain
    from iarm_torchrec.models.iarm import IARMConfig

    torch.manual_seed(0)
    spec = preprocess(dataset, str(source), str(tmp_path), workers=1)
    loader = ShardedBatchLoader(tmp_path, "train", batch_size=32, shuffle=True)
    batch = next(iter(loader))
    features = spec.to_feature_config(16)
    if not features.user_feature_names:  # a dataset without user fields still trains IARM*
        config = IARMConfig(features, use_interest=False)
    else:
        config = IARMConfig(features)
    model = CTRTrain(config.build())
    loss, (_, logits, labels) = model(batch)
    loss.backward()
    assert logits.shape == (32,) and torch.isfinite(loss)
    for name, param in model.named_parameters():
        assert param.grad is not None, f"{dataset}: {name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{dataset}: {name} has a non-finite gradient"
