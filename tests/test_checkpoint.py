"""Checkpoints: complete or absent, pruned to the last ones and the best, damage named and
survived (auto-resume falls back to the previous intact checkpoint and ends the same)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.registry import config_from_dict
from iarm_torchrec.train.checkpoint import KEEP_LAST, PROGRESS_FILE, CheckpointError, CheckpointManager
from iarm_torchrec.train.layout import CHECKPOINT_DIR, METRICS_FILE, MODEL_FILE
from train_utils import checkpointed_run, train_run

STEPS = 2 * (16_000 // 512)  # two epochs of 31 steps


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpointed_run(tmp_path_factory.getbasetemp())


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the finished run to damage."""
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_keeps_the_last_checkpoints_and_the_best(run: Path) -> None:
    metrics = json.loads((run / METRICS_FILE).read_text())
    names = [p.name for p in CheckpointManager(run / CHECKPOINT_DIR).complete()]
    assert names[-KEEP_LAST:] == ["step-00000060", f"step-{STEPS:08d}"]
    assert metrics["best_checkpoint"] in names and set(names) <= {"step-00000031", "step-00000060", f"step-{STEPS:08d}"}
    assert not list((run / CHECKPOINT_DIR).glob("*.tmp"))
    progress = CheckpointManager(run / CHECKPOINT_DIR).verify(run / CHECKPOINT_DIR / "step-00000060")
    assert (progress.epoch, progress.batch, progress.step) == (1, 29, 60)
    assert [h["epoch"] for h in progress.history] == [0]


def test_a_truncated_checkpoint_is_named_and_the_previous_one_used(copy: Path) -> None:
    manager = CheckpointManager(copy / CHECKPOINT_DIR)
    latest = copy / CHECKPOINT_DIR / f"step-{STEPS:08d}"
    shard = sorted(latest.glob("*.distcp"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError) as error:
        manager.verify(latest)
    message = str(error.value)
    assert str(shard) in message and "100 bytes" in message
    assert "the previous checkpoint" in message and "step-00000060" in message
    assert manager.latest() == copy / CHECKPOINT_DIR / "step-00000060"
    model = CTRTrain(config_from_dict(json.loads((copy / MODEL_FILE).read_text())).build(torch.device("cpu")))
    with pytest.raises(CheckpointError, match="damaged checkpoint file"):
        manager.load(latest, model)


def test_an_unfinished_checkpoint_is_not_one(copy: Path) -> None:
    manager = CheckpointManager(copy / CHECKPOINT_DIR)
    partial = copy / CHECKPOINT_DIR / "step-00000070.tmp"
    shutil.copytree(copy / CHECKPOINT_DIR / "step-00000060", partial)
    (partial / PROGRESS_FILE).unlink()
    assert partial not in manager.complete()
    half = copy / CHECKPOINT_DIR / "step-00000080"
    partial.rename(half)
    with pytest.raises(CheckpointError, match=r"step-00000080: not a complete checkpoint \(no progress.json\)"):
        manager.verify(half)
    assert manager.latest() == copy / CHECKPOINT_DIR / f"step-{STEPS:08d}"


def test_resume_skips_a_damaged_latest_checkpoint_and_ends_the_same(run: Path, copy: Path) -> None:
    """The damaged last checkpoint is skipped; from step 60 the run redoes steps 61-62, the
    epoch's evaluation and the test, and ends where the original did."""
    original = json.loads((run / METRICS_FILE).read_text())
    (copy / METRICS_FILE).unlink()
    latest = copy / CHECKPOINT_DIR / f"step-{STEPS:08d}"
    (latest / "rng-0.pt").write_bytes(b"")
    resumed = train_run(run.parent.parent / "train-data", copy, extra=["--checkpoint-every", "10", "--resume"])
    log = copy.with_name(copy.name + ".log").read_text()
    assert "skipping a damaged checkpoint" in log and "rng-0.pt: damaged checkpoint file (0 bytes" in log
    assert "resumed from" in log and "step-00000060 (epoch 1, batch 29, step 60)" in log
    for key in ("test_auc", "test_logloss", "valid_auc", "steps"):
        assert resumed[key] == pytest.approx(original[key], abs=1e-6), key
    for a, b in zip(resumed["epochs"], original["epochs"]):
        for key in ("train_loss", "valid_auc", "valid_logloss", "step"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["epoch"], key)


def test_a_fresh_start_refuses_a_folder_with_checkpoints(run: Path, copy: Path) -> None:
    (copy / METRICS_FILE).unlink()
    with pytest.raises(AssertionError) as error:
        train_run(run.parent.parent / "train-data", copy)
    assert "already holds checkpoints of a run: pass --resume to continue it" in str(error.value)
