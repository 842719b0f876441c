"""Fault injection: nothing a user trained is lost or silently wrong (issue 15, one test per case).

1 stale cache, 2 a refused run leaves the run it refuses intact, 3 damaged checkpoints of the right
size, 4 NaN loss, 5 long fields and lines, 6 two trainings into one --out, 7 --resume with changed
settings, 8 two preprocessings into one folder, 9 errors name the path, 10 --skip-bad-rows with
nothing left, 11 exports carry a checksum, 12 MovieLens predict keeps one line per input row;
and the CLI's one-line errors, no leftover temporary folder.
"""

import errno
import gzip
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

from iarm_torchrec.cli import main as iarm
from iarm_torchrec.data.cache import DataSource, cache_dir, prepare_data
from iarm_torchrec.data.preprocess import encode, preprocess
from iarm_torchrec.data.rows import Chunk, split_table
from iarm_torchrec.data.spec import SPEC_FILE, FeatureSpec
from iarm_torchrec.files import atomic_write_json
from iarm_torchrec.inference.export import _data_files, export_run, load_exported, read_export, FORMAT
from iarm_torchrec.inference.predict import predict
from iarm_torchrec.integrity import file_manifest, sha256_of_tree
from iarm_torchrec.locks import LOCK_FILE, acquire, folder_lock, release
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.registry import config_from_dict, make_config, model_config_dict
from iarm_torchrec.train.checkpoint import PROGRESS_FILE, CheckpointError, CheckpointManager, load_with_fallback
from iarm_torchrec.train.guards import finite_or_worst
from iarm_torchrec.train.layout import CHECKPOINT_DIR, METRICS_FILE, MODEL_FILE, SETTINGS_FILE
from train_utils import run_env, train_run

TINY: List[str] = [
    "--synthetic-rows", "3000", "--batch-size", "256", "--epochs", "1", "--max-steps-per-epoch", "5",
    "--embedding-dim", "4", "--num-layers", "1", "--head-dim", "4", "--interest-layers", "8",
    "--device", "cpu", "--checkpoint-every", "2",
]  # fmt: skip
LATEST, PREVIOUS = "step-00000005", "step-00000004"


# --------------------------------------------------------------------------- helpers


def criteo_row(label: str = "0", cats: List[str] = None, i1: str = "1") -> str:
    cats = cats if cats is not None else [f"{j:08x}" for j in range(26)]
    return "\t".join([label, i1] + [str(i) for i in range(12)] + cats)


def criteo_file(path: Path, rows: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = [criteo_row(str(rng.integers(0, 2)), [f"{rng.integers(0, 3):08x}" for _ in range(26)]) for _ in range(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def movielens_folder(folder: Path, ratings: List[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n2::Jumanji (1995)::Adventure\n")
    lines = [f"{1 + i % 2}::{1 + i // 2 % 2}::{r}::{978300760 + i}" for i, r in enumerate(ratings)]
    (folder / "ratings.dat").write_text("".join(line + "\n" for line in lines))
    return folder


def snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def log_of(out: Path) -> str:
    return out.with_name(out.name + ".log").read_text()


def failed_run(data_dir: Path, out: Path, extra: List[str]) -> str:
    """Train, expecting failure; returns the output."""
    with pytest.raises(AssertionError) as error:
        train_run(data_dir, out, extra=[*TINY, *extra])
    assert "failed (" in str(error.value)  # exit status != 0
    return log_of(out)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def data_dir(base: Path) -> Path:
    return base / "data"


@pytest.fixture(scope="module")
def run(base: Path, data_dir: Path) -> Path:
    """A tiny finished run: checkpoints at steps 2, 4 and 5 (the last two kept)."""
    out = base / "runs" / "tiny"
    train_run(data_dir, out, extra=TINY)
    names = [p.name for p in CheckpointManager(out / CHECKPOINT_DIR).complete()]
    assert names[-2:] == [PREVIOUS, LATEST]
    return out


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


@pytest.fixture(scope="module")
def exported(run: Path, base: Path) -> Path:
    return export_run(run, base / "export" / "model.pt")


def flip(path: Path, offset: int, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, min(offset + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def model_of(run_dir: Path) -> CTRTrain:
    return CTRTrain(config_from_dict(json.loads((run_dir / MODEL_FILE).read_text())).build(torch.device("cpu")))


# --------------------------------------------------------------------------- 1. stale cache


def test_1_a_replaced_raw_file_is_preprocessed_again_and_the_log_says_why(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = criteo_file(tmp_path / "raw" / "train.txt", 400)
    source = DataSource("criteo", str(raw), tmp_path / "cache", {"min_count": 1}, 0)
    caplog.set_level(logging.INFO, logger="iarm_torchrec")
    first = prepare_data(source, True, lambda: None)
    assert sum(FeatureSpec.load(first).rows.values()) == 400
    caplog.clear()
    assert prepare_data(source, True, lambda: None) == first  # unchanged: cached, no preprocessing
    assert "preprocessing" not in caplog.text

    lines = raw.read_text().splitlines(keepends=True)
    raw.write_text("".join(lines[:300]))  # cut at the same path
    second = prepare_data(source, True, lambda: None)
    assert second != first and sum(FeatureSpec.load(second).rows.values()) == 300
    assert f"{raw.resolve()} changed (size" in caplog.text and "preprocessing criteo" in caplog.text

    # same size and modification time, other content: the fingerprint still sees it
    stat = raw.stat()
    raw.write_text(raw.read_text().replace("\t00000001", "\t00000002", 1))
    os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert raw.stat().st_size == stat.st_size
    assert cache_dir(source) != second
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([first.name, second.name])  # no .tmp, no lock


# --------------------------------------------------------------------------- 2. a refused run


def test_2_a_refused_fresh_run_leaves_the_run_intact(copy: Path, data_dir: Path, tmp_path: Path) -> None:
    (copy / METRICS_FILE).unlink()
    before = snapshot(copy)
    log = failed_run(data_dir, copy, ["--batch-size", "128", "--lr", "0.5"])
    assert "already holds checkpoints of a run: pass --resume to continue it" in log
    assert snapshot(copy) == before  # byte-identical: settings.json, model.json, spec.json, run.json
    assert iarm(["export", str(copy), "--out", str(tmp_path / "model.pt")]) == 0
    assert load_exported(tmp_path / "model.pt") is not None


# --------------------------------------------------------------------------- 3. damaged checkpoints


def test_3_flipped_bytes_of_the_right_size_are_named_and_the_previous_checkpoint_used(copy: Path) -> None:
    manager = CheckpointManager(copy / CHECKPOINT_DIR)
    shard = max((copy / CHECKPOINT_DIR / LATEST).glob("*.distcp"), key=lambda p: p.stat().st_size)
    flip(shard, shard.stat().st_size // 2)
    with pytest.raises(CheckpointError) as error:
        manager.verify(copy / CHECKPOINT_DIR / LATEST)
    assert f"{shard}: checksum mismatch" in str(error.value) and PREVIOUS in str(error.value)
    assert manager.latest() == copy / CHECKPOINT_DIR / PREVIOUS


def test_3_undecodable_progress_json_is_damage(copy: Path) -> None:
    manager = CheckpointManager(copy / CHECKPOINT_DIR)
    record = copy / CHECKPOINT_DIR / LATEST / PROGRESS_FILE
    record.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(CheckpointError, match=rf"{record}: damaged \((UnicodeDecodeError|JSONDecodeError)"):
        manager.verify(copy / CHECKPOINT_DIR / LATEST)
    assert manager.latest() == copy / CHECKPOINT_DIR / PREVIOUS


def test_3_a_checkpoint_dcp_cannot_load_falls_back(copy: Path) -> None:
    """Damage the manifest cannot see (rewritten to match): dcp.load raises CheckpointException
    (a BaseException) or another error; either is damage and the previous checkpoint is loaded."""
    latest = copy / CHECKPOINT_DIR / LATEST
    for shard in latest.glob("*.distcp"):
        shard.write_bytes(np.random.default_rng(1).bytes(shard.stat().st_size))
    record = json.loads((latest / PROGRESS_FILE).read_text())
    record["files"] = file_manifest(latest, list(record["files"]))
    atomic_write_json(latest / PROGRESS_FILE, record)
    manager = CheckpointManager(copy / CHECKPOINT_DIR)
    assert manager.latest() == latest  # the manifest passes
    model = model_of(copy)
    with pytest.raises(CheckpointError, match=rf"{latest}: damaged, cannot be loaded"):
        manager.load(latest, model)
    path, progress = load_with_fallback(manager, latest, model, None, fallback=True)
    assert path == copy / CHECKPOINT_DIR / PREVIOUS and progress.step == 4


def test_3_resume_latest_falls_back_over_flipped_bytes_and_finishes(copy: Path, data_dir: Path) -> None:
    (copy / METRICS_FILE).unlink()
    shard = max((copy / CHECKPOINT_DIR / LATEST).glob("*.distcp"), key=lambda p: p.stat().st_size)
    flip(shard, shard.stat().st_size // 2)
    metrics = train_run(data_dir, copy, extra=[*TINY, "--resume", "latest"])
    log = log_of(copy)
    assert "skipping a damaged checkpoint" in log and "checksum mismatch" in log
    assert f"resumed from {copy / CHECKPOINT_DIR / PREVIOUS}" in log
    assert metrics["steps"] == 5 and np.isfinite(metrics["test_auc"])


# --------------------------------------------------------------------------- 4. NaN


def test_4_a_nan_loss_stops_training_naming_the_step(data_dir: Path, base: Path) -> None:
    out = base / "runs" / "nan"
    log = failed_run(data_dir, out, ["--lr", "1e8", "--sparse-lr", "1e8"])
    assert "training stopped: the loss is" in log and "at step" in log
    assert "Try a lower --lr (now 1e+08) and --sparse-lr (now 1e+08), or gradient clipping" in log
    assert "Traceback" not in log and not (out / METRICS_FILE).exists()


def test_4_non_finite_validation_never_makes_the_best_epoch_and_metrics_are_strict_json(tmp_path: Path) -> None:
    history = [{"epoch": 0, "valid_auc": 0.6}, {"epoch": 1, "valid_auc": float("nan")}, {"epoch": 2, "valid_auc": None}]
    assert max(history, key=lambda r: finite_or_worst(r["valid_auc"]))["epoch"] == 0
    atomic_write_json(tmp_path / "m.json", {"test_auc": float("nan"), "loss": float("inf")})
    assert json.loads((tmp_path / "m.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {"test_auc": None, "loss": None}


# --------------------------------------------------------------------------- 5. long fields and lines


def test_5_a_long_field_costs_its_size_not_the_chunk_times_its_size(tmp_path: Path) -> None:
    rows = [criteo_row() for _ in range(2000)]
    rows[7] = criteo_row(cats=["x" * 16_000] + [f"{j:08x}" for j in range(25)])
    data = "".join(r + "\n" for r in rows).encode()
    chunk = Chunk(0, "train.txt", 0, len(data), False, 1, 0, len(rows))
    table = split_table(data, chunk, b"\t", ",".join(["label"] + [f"c{j}" for j in range(39)]), 40, skip=False)
    size = table.tokens.nbytes + (sum(map(len, table.tokens.reshape(-1))) if table.tokens.dtype == object else 0)
    assert size < 8 * len(data) + (1 << 20)  # fixed width would be 2000 * 40 * 16000 = 1.28 GB
    assert table.tokens[7, 14] == b"x" * 16_000

    src = tmp_path / "train.txt"
    src.write_bytes(data)
    spec = preprocess("criteo", str(src), str(tmp_path / "out"), workers=1, min_count=1)
    assert sum(spec.rows.values()) == 2000


def test_5_an_over_long_field_or_line_is_a_located_bad_row(tmp_path: Path) -> None:
    rows = [criteo_row() for _ in range(5)]
    rows[1] = criteo_row(cats=["y" * 70_000] + [f"{j:08x}" for j in range(25)])
    rows[3] = criteo_row(i1="9" * (2 << 20))
    src = tmp_path / "train.txt"
    src.write_text("".join(r + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"train.txt:4: line of 2,097,\d+ bytes is longer than the limit of 1,048,576 bytes"):
        preprocess("criteo", str(src), str(tmp_path / "a"), workers=1)
    with pytest.raises(ValueError, match=r"train.txt:2: field C1: 'yyyy.*' \(70,000 bytes\) is longer than the limit of 65,536 bytes"):
        preprocess("criteo", str(src), str(tmp_path / "b"), workers=1, max_line_bytes=4 << 20)
    spec = preprocess("criteo", str(src), str(tmp_path / "c"), workers=1, min_count=1, skip_bad_rows=True)
    assert sum(spec.rows.values()) == 3 and spec.options["skipped_rows"] == 2
    flags = ["--max-field-bytes", "100000", "--max-line-bytes", "4000000", "--skip-bad-rows", "--min-count", "1", "--workers", "1"]
    assert iarm(["data", "criteo", str(src), str(tmp_path / "d"), *flags]) == 0
    assert sum(FeatureSpec.load(tmp_path / "d").rows.values()) == 4  # the 70 KB field is allowed now


# --------------------------------------------------------------------------- 6. two trainings into one --out


def test_6_a_second_training_into_a_locked_out_is_refused_before_writing(data_dir: Path, base: Path) -> None:
    out = base / "runs" / "locked"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        out.mkdir(parents=True)
        (out / LOCK_FILE).write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid, "purpose": "iarm train", "since": "now"}))
        log = failed_run(data_dir, out, [])
        assert f"{out}: in use by pid {holder.pid} on {os.uname().nodename} (iarm train" in log
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale, taken over
    metrics = train_run(data_dir, out, extra=TINY)
    assert metrics["steps"] == 5 and "removing a stale lock of pid" in log_of(out)
    assert not (out / LOCK_FILE).exists()  # released at the end


def test_6_the_lock_names_its_owner_and_is_released(tmp_path: Path) -> None:
    lock = acquire(tmp_path, "iarm train")
    with pytest.raises(RuntimeError, match=rf"{tmp_path}: in use by pid {os.getpid()}"):
        acquire(tmp_path, "iarm train")
    release(lock)
    with folder_lock(tmp_path, "again"):
        pass
    assert not (tmp_path / LOCK_FILE).exists()


# --------------------------------------------------------------------------- 7. --resume with changed settings


def test_7_resume_with_changed_settings_is_refused_listing_them(copy: Path, data_dir: Path) -> None:
    (copy / METRICS_FILE).unlink()
    before = (copy / SETTINGS_FILE).read_bytes()
    log = failed_run(data_dir, copy, ["--resume", "latest", "--batch-size", "128", "--sparse-lr", "0.5", "--epochs", "3"])
    assert "--resume with settings that differ from the run's" in log
    assert "batch_size 256 -> 128" in log and "sparse_lr 0.05 -> 0.5" in log and "epochs" not in log.split("differ")[1].split("Only")[0]
    assert (copy / SETTINGS_FILE).read_bytes() == before


# --------------------------------------------------------------------------- 8. two preprocessings at once


def _prepare(args) -> str:
    raw, cache = args
    return str(prepare_data(DataSource("criteo", raw, Path(cache), {"min_count": 1}, 0), True, lambda: None))


@pytest.mark.slow
def test_8_two_preprocessings_into_one_cache_both_succeed(tmp_path: Path) -> None:
    raw = criteo_file(tmp_path / "raw" / "train.txt", 3000)
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_prepare, [(str(raw), str(tmp_path / "cache"))] * 2)
    assert a == b and sum(FeatureSpec.load(Path(a)).rows.values()) == 3000
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [Path(a).name]  # no .tmp, no lock left


def test_8_a_second_preprocessing_into_one_output_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = criteo_file(tmp_path / "train.txt", 50)
    with folder_lock(tmp_path / "out", "iarm data"):
        assert iarm(["data", "criteo", str(raw), str(tmp_path / "out"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert f"iarm data: error: {tmp_path / 'out'}: in use by pid {os.getpid()}" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


# --------------------------------------------------------------------------- 9. errors name the path


def test_9_a_truncated_gzip_is_named(tmp_path: Path) -> None:
    raw = criteo_file(tmp_path / "plain.txt", 3000)
    gz = tmp_path / "train.txt.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes())[:-200])
    with pytest.raises(ValueError, match=rf"{gz}: damaged gzip file"):
        preprocess("criteo", str(gz), str(tmp_path / "out"), workers=1)


def test_9_random_bytes_as_ratings_dat_are_named(tmp_path: Path) -> None:
    folder = movielens_folder(tmp_path / "ml", [5])
    (folder / "ratings.dat").write_bytes(np.random.default_rng(0).bytes(20_000))
    with pytest.raises(ValueError, match=r"ratings.dat:\d+: "):
        preprocess("movielens-1m", str(folder), str(tmp_path / "out"), workers=1)


@pytest.mark.parametrize("damage", ["truncated", "not-a-model"])
def test_9_a_bad_model_file_given_to_predict_is_one_line(exported: Path, tmp_path: Path, damage: str, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "model.pt"
    if damage == "truncated":
        bad.write_bytes(exported.read_bytes()[: exported.stat().st_size // 2])
    else:
        bad.write_bytes(np.random.default_rng(0).bytes(5000))
    assert iarm(["predict", "--model", str(bad), "--input", str(tmp_path / "x.txt"), "--out", str(tmp_path / "s.txt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"iarm predict: error: {bad}: not a readable iarm export") and err.count("\n") == 1
    assert "weights_only" not in err and "Traceback" not in err


def test_9_a_full_disk_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    raw = criteo_file(tmp_path / "train.txt", 50)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert iarm(["data", "criteo", str(raw), str(tmp_path / "out"), "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert err == f"iarm data: error: disk full while writing {tmp_path / 'out' / SPEC_FILE}\n"


# --------------------------------------------------------------------------- 10. nothing left after skipping


def test_10_skip_bad_rows_with_every_row_bad_fails(tmp_path: Path) -> None:
    src = tmp_path / "train.txt"
    src.write_text("a\tb\nc\n\n")
    with pytest.raises(ValueError, match=rf"no rows left after skipping 3 bad rows in {src}"):
        preprocess("criteo", str(src), str(tmp_path / "out"), workers=1, skip_bad_rows=True)
    assert not (tmp_path / "out" / SPEC_FILE).exists() and not (tmp_path / "out" / "train").exists()


# --------------------------------------------------------------------------- 11. export checksum


def test_11_an_export_with_changed_weights_is_refused(exported: Path, tmp_path: Path) -> None:
    payload = torch.load(exported, weights_only=True)
    assert payload["sha256"] == sha256_of_tree({k: v for k, v in payload.items() if k != "sha256"})
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1e-3  # the stored checksum is kept
    torch.save(payload, tmp_path / "changed.pt")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'changed.pt'}: checksum mismatch: the exported model is damaged"):
        read_export(tmp_path / "changed.pt")


def test_11_flipped_bytes_in_an_export_file_are_refused(exported: Path, tmp_path: Path) -> None:
    bad = tmp_path / "flipped.pt"
    shutil.copyfile(exported, bad)
    with zipfile.ZipFile(bad) as archive:
        entry = max(archive.infolist(), key=lambda e: e.file_size)
    flip(bad, entry.header_offset + 30 + len(entry.filename.encode()) + len(entry.extra) + entry.file_size // 2, 16)
    with pytest.raises(ValueError, match=rf"{bad}: .*damaged"):
        load_exported(bad)


# --------------------------------------------------------------------------- 12. MovieLens predict


def test_12_movielens_predict_writes_one_line_per_input_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ratings = [5, 3, 1, 4, 3, 2, 3, 5]
    folder = movielens_folder(tmp_path / "ml", ratings)
    data = tmp_path / "data"
    spec = preprocess("movielens-1m", str(folder), str(data), workers=1, valid_ratio=0.0, test_ratio=0.0)
    assert sum(spec.rows.values()) == 5  # training's protocol: rating 3 dropped
    config = make_config("iarm", spec.to_feature_config(4))
    model = config.build(torch.device("cpu"))
    payload = {
        "format": FORMAT, "model_config": model_config_dict(config), "feature_spec": json.loads((data / SPEC_FILE).read_text()),
        "data_files": _data_files(data), "state_dict": model.state_dict(), "checkpoint": "none",
    }  # fmt: skip
    payload["sha256"] = sha256_of_tree(payload)
    torch.save(payload, tmp_path / "ml.pt")
    caplog.set_level(logging.WARNING, logger="iarm_torchrec")
    scores = predict(tmp_path / "ml.pt", folder, tmp_path / "scores.txt", progress=False)
    lines = (tmp_path / "scores.txt").read_text().splitlines()
    assert len(lines) == len(scores) == len(ratings) and all(0 < float(x) < 1 for x in lines)
    assert "3 of 8 rows have rating 3, which training drops (no click label): they are scored too" in caplog.text
    encoded = encode(str(folder), str(data), str(tmp_path / "enc"), keep_neutral=True)
    assert encoded.options["neutral_rows"] == 3 and encoded.rows["test"] == 8


# --------------------------------------------------------------------------- CLI, leftovers


def test_cli_errors_are_one_line_naming_the_file_with_the_traceback_behind_debug(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "iarm_torchrec.cli", "data", "criteo", str(tmp_path / "absent.txt"), str(tmp_path / "o")]
    plain = subprocess.run(command, capture_output=True, text=True, env=run_env())
    assert plain.returncode == 1
    assert plain.stderr == f"iarm data: error: {tmp_path / 'absent.txt'}: no such file or folder\n"
    debug = subprocess.run(command, capture_output=True, text=True, env=run_env(IARM_DEBUG="1"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and debug.stderr.endswith("no such file or folder\n")


def test_a_failed_preprocessing_leaves_no_temporary_folder(tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "train.txt"
    raw.parent.mkdir()
    raw.write_text(criteo_row() + "\n" + criteo_row(label="7") + "\n")
    source = DataSource("criteo", str(raw), tmp_path / "cache", {}, 0)
    with pytest.raises(ValueError, match=r"train.txt:2: field label: '7' is not 0 or 1"):
        prepare_data(source, True, lambda: None)
    assert list((tmp_path / "cache").iterdir()) == []  # no .tmp folder, no lock
    with pytest.raises(ValueError):
        preprocess("criteo", str(raw), str(tmp_path / "out"), workers=1)
    assert list((tmp_path / "out").iterdir()) == []  # what the failed run wrote is gone
