"""Export -> load -> predict reproduces the trained model's test scores, from the raw file."""

import json
import shutil
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch

from iarm_torchrec.cli import main as iarm
from iarm_torchrec.data.loader import PADDING_LABEL, ShardedBatchLoader
from iarm_torchrec.data.synthetic import TSV_DIR
from iarm_torchrec.inference.export import FORMAT, export_run, load_exported, read_export
from iarm_torchrec.inference.predict import predict, scoring_precision
from iarm_torchrec.integrity import sha256_of_tree
from iarm_torchrec.models.ctr_train import native_bf16
from iarm_torchrec.models.iarm import IARM
from iarm_torchrec.train.checkpoint import CheckpointError
from iarm_torchrec.train.evaluate import binary_metrics
from iarm_torchrec.train.layout import CHECKPOINT_DIR, METRICS_FILE, RUN_FILE, SETTINGS_FILE
from train_utils import checkpointed_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpointed_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def exported(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "iarm.pt"
    assert iarm(["export", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def data_dir(run: Path) -> Path:
    return Path(json.loads((run / RUN_FILE).read_text())["data_dir"])


def _test_rows(data_dir: Path) -> List[bytes]:
    """The synthetic test split's raw rows: the last ones in generation order (time split)."""
    spec = json.loads((data_dir / "spec.json").read_text())
    lines = (data_dir / TSV_DIR / "train.txt").read_bytes().splitlines(keepends=True)
    return lines[len(lines) - spec["rows"]["test"] :]


def test_the_export_is_plain_data_with_every_table_whole(exported: Path, run: Path, data_dir: Path) -> None:
    payload = torch.load(exported, weights_only=True)
    assert payload["format"] == FORMAT
    assert payload["checkpoint"] == json.loads((run / METRICS_FILE).read_text())["best_checkpoint"]
    spec = payload["feature_spec"]
    for field in spec["sparse"]:
        table = payload["state_dict"][f"embedding_arch.embedding_bag_collection.embedding_bags.t_{field['name']}.weight"]
        assert tuple(table.shape) == (field["vocab_size"], 8)
    assert "spec.json" in payload["data_files"] and any(k.startswith("vocab/") for k in payload["data_files"])
    assert sorted(p.name for p in exported.parent.iterdir() if p.name.endswith(".tmp")) == []  # no temporary left


def _test_split_scores(model: torch.nn.Module, data_dir: Path) -> Tuple[torch.Tensor, torch.Tensor]:
    """``model``'s logits and the labels over the preprocessed test split, padding dropped,
    computed here, outside the trainer."""
    logits, labels = [], []
    with torch.no_grad():
        for batch in ShardedBatchLoader(data_dir, "test", batch_size=1000, drop_last=False):
            keep = batch.labels != PADDING_LABEL
            logits.append(model(batch.dense_features, batch.sparse_features)[keep])
            labels.append(batch.labels[keep])
    return torch.cat(logits), torch.cat(labels)


def test_the_loaded_model_reproduces_the_test_metrics(exported: Path, run: Path, data_dir: Path) -> None:
    metrics = json.loads((run / METRICS_FILE).read_text())
    model = load_exported(exported)
    assert isinstance(model, IARM) and not model.training
    result = binary_metrics(*_test_split_scores(model, data_dir))
    assert result.rows == metrics["test_rows"]
    assert result.auc == pytest.approx(metrics["test_auc"], abs=1e-5)
    assert result.logloss == pytest.approx(metrics["test_logloss"], abs=1e-5)


def test_predict_on_the_raw_test_file_gives_the_same_scores(exported: Path, run: Path, data_dir: Path, tmp_path: Path) -> None:
    metrics = json.loads((run / METRICS_FILE).read_text())
    rows = _test_rows(data_dir)
    labelled = tmp_path / "test.txt"
    labelled.write_bytes(b"".join(rows))
    unlabelled = tmp_path / "test-unlabelled.txt"
    unlabelled.write_bytes(b"".join(r.split(b"\t", 1)[1] for r in rows))

    scores = predict(exported, labelled, tmp_path / "scores.txt", batch_size=700, progress=False)
    written = np.loadtxt(tmp_path / "scores.txt")
    assert len(written) == len(rows) == metrics["test_rows"]
    assert np.allclose(written, scores.numpy(), atol=1e-6)
    labels = torch.tensor([float(r[:1]) for r in rows])
    result = binary_metrics(torch.logit(scores.double()), labels)
    assert result.auc == pytest.approx(metrics["test_auc"], abs=1e-5)
    assert result.logloss == pytest.approx(metrics["test_logloss"], abs=1e-5)

    assert iarm(["predict", "--model", str(exported), "--input", str(unlabelled), "--out", str(tmp_path / "u.txt"), "--unlabelled"]) == 0
    assert np.array_equal(np.loadtxt(tmp_path / "u.txt"), written)


def test_load_exported_rebuilds_a_subclass(exported: Path) -> None:
    class Probe(IARM):
        pass

    model = load_exported(exported, model_class=Probe)
    assert type(model) is Probe
    reference = load_exported(exported)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name


def test_exporting_without_a_checkpoint_says_so(run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, METRICS_FILE))
    with pytest.raises(CheckpointError, match="no complete checkpoint to export; train first"):
        export_run(bare, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an iarm export"):
        torch.save({"format": "other"}, tmp_path / "other.pt")
        load_exported(tmp_path / "other.pt")


def test_scoring_does_not_import_training() -> None:
    """``iarm predict`` reads an export without the training modules (torchmetrics, the sharding
    planners: about half a second of its start-up); a fresh interpreter shows what it imports."""
    import subprocess
    import sys

    code = ("import sys, iarm_torchrec.inference.predict; "
            "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('torchmetrics')} | "
            "{m for m in sys.modules if m.startswith('iarm_torchrec.train')}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_predict_freezes_its_imports(exported: Path, data_dir: Path, tmp_path: Path) -> None:
    """``iarm predict`` imports torch, torchrec and FBGEMM with the garbage collector paused and
    freezes what they made, so no full collector pass walks those millions of objects (six passes,
    ~0.5 s of its start-up, before); called in-process, it gives them back to the collector."""
    import gc
    import subprocess
    import sys

    rows = tmp_path / "rows.txt"
    rows.write_bytes(b"".join(r.split(b"\t", 1)[1] for r in _test_rows(data_dir)[:50]))
    command = ["predict", "--model", str(exported), "--input", str(rows), "--unlabelled"]
    # a full pass while torch is loaded and nothing is frozen walks every imported object
    code = ("import gc, sys\n"
            "walked = []\n"
            "gc.callbacks.append(lambda phase, info: walked.append(1) if phase == 'start' and info['generation'] == 2 "
            "and 'torch' in sys.modules and not gc.get_freeze_count() else None)\n"
            f"sys.argv = ['iarm'] + {command + ['--out', str(tmp_path / 'program.txt')]!r}\n"
            "from iarm_torchrec.cli import main\n"
            "status = main()\n"
            "print(status, len(walked), gc.get_freeze_count() > 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "0 0 True"

    assert iarm(command + ["--out", str(tmp_path / "in_process.txt")]) == 0
    assert gc.get_freeze_count() == 0 and gc.isenabled()
    assert (tmp_path / "program.txt").read_bytes() == (tmp_path / "in_process.txt").read_bytes()


def test_scoring_threads_give_the_same_bytes(exported: Path, data_dir: Path, tmp_path: Path) -> None:
    """Batches scored at once on several threads (one core each) write exactly what one thread
    writes, in input order, and a non-positive count is refused."""
    rows = tmp_path / "rows.txt"
    rows.write_bytes(b"".join(r.split(b"\t", 1)[1] for r in _test_rows(data_dir)))
    outputs = {}
    for threads in (1, 3):
        out = tmp_path / f"threads-{threads}.txt"
        assert iarm(["predict", "--model", str(exported), "--input", str(rows), "--out", str(out), "--unlabelled",
                     "--batch-size", "64", "--threads", str(threads)]) == 0
        outputs[threads] = out.read_bytes()
    assert outputs[1] == outputs[3] and outputs[1].count(b"\n") == len(_test_rows(data_dir))
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        predict(exported, rows, tmp_path / "never.txt", labelled=False, threads=0, progress=False)


def test_predict_scores_in_the_precision_the_model_was_trained_in(exported: Path, run: Path, data_dir: Path,
                                                                  tmp_path: Path) -> None:
    """The export records its run's precision; ``iarm predict`` computes in it unless told
    otherwise (``auto``: bf16 where the CPU computes it natively; ``fp16``, CUDA training, as fp32)."""
    payload = read_export(exported)
    assert payload["training_run"]["precision"] == json.loads((run / SETTINGS_FILE).read_text())["precision"] == "fp32"
    payload["training_run"]["precision"] = "bf16"  # what the export of a --precision bf16 run records
    payload["sha256"] = sha256_of_tree(payload)
    trained_bf16 = tmp_path / "bf16.pt"
    torch.save(payload, trained_bf16)
    rows = tmp_path / "rows.txt"
    rows.write_bytes(b"".join(r.split(b"\t", 1)[1] for r in _test_rows(data_dir)))
    written = {}
    for name, model, flags in (("default, trained bf16", trained_bf16, []), ("asked bf16", exported, ["--precision", "bf16"]),
                               ("default, trained fp32", exported, []), ("asked fp32", trained_bf16, ["--precision", "fp32"])):
        out = tmp_path / f"{len(written)}.txt"
        assert iarm(["predict", "--model", str(model), "--input", str(rows), "--out", str(out), "--unlabelled", *flags]) == 0
        written[name] = out.read_bytes()
    assert written["default, trained bf16"] == written["asked bf16"] != written["default, trained fp32"]
    assert written["default, trained fp32"] == written["asked fp32"]
    assert scoring_precision(None, "auto") == ("bf16" if native_bf16("cpu") else "fp32")
    assert scoring_precision(None, "fp16") == "fp32" and scoring_precision("fp32", "bf16") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        scoring_precision("fp16", "fp32")


def test_scored_in_order_runs_batches_at_once_on_one_core_each() -> None:
    """The scoring threads return each batch's probabilities in the batches' order (padding rows
    dropped) however long each takes, compute with one intra-op thread, several at a time, and
    leave torch's thread count as it was."""
    import threading
    import time

    from torchrec.datasets.utils import Batch
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from iarm_torchrec.inference.predict import scored_in_order

    seen = []
    running, most = [0], [0]
    lock = threading.Lock()

    def score(dense: torch.Tensor, sparse: object) -> torch.Tensor:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            seen.append((threading.current_thread().name, torch.get_num_threads(), torch.is_inference_mode_enabled()))
        time.sleep(0.02 * float(dense[0, 1]))  # later batches finish first
        with lock:
            running[0] -= 1
        return torch.sigmoid(dense[:, 0])

    kjt = KeyedJaggedTensor.from_lengths_sync(["f"], torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))
    batches = [Batch(dense_features=torch.tensor([[float(4 * b + r), float(5 - b)] for r in range(4)]), sparse_features=kjt,
                     labels=torch.tensor([0.0, 1.0, 0.0, PADDING_LABEL if b == 5 else 1.0])) for b in range(6)]
    before = torch.get_num_threads()
    scores = torch.cat(list(scored_in_order(score, batches, threads=3)))
    assert torch.equal(scores, torch.sigmoid(torch.tensor([float(i) for i in range(24) if i != 23])))
    assert torch.get_num_threads() == before
    assert {threads for _, threads, _ in seen} == {1} and all(inference for _, _, inference in seen)
    assert len({name for name, _, _ in seen}) == 3 and most[0] == 3
