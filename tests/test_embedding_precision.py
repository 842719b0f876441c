"""The ``embedding_precision`` training setting: float16 tables on FBGEMM's fused kernels.

The tables are float16 in the sharded model (half the bytes), pool into float32 and keep
float32 optimizer state; a small synthetic run trains as the float32 run does (validation AUC
within 0.002 at the same seed); checkpoints hold float16 tables and resume exactly; the export
upcasts them to float32, so export, predict, the serving export and the attention maps work
unchanged and score as the training's evaluation did.
"""

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from components import iarm as iarm_component
from dist_utils import run_ranks
from iarm_torchrec.cli import main as iarm
from iarm_torchrec.experiments.attention import run_attention
from iarm_torchrec.inference.export import load_exported
from iarm_torchrec.inference.predict import predict
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.train.checkpoint import CheckpointManager
from iarm_torchrec.train.evaluate import binary_metrics
from iarm_torchrec.train.layout import CHECKPOINT_DIR, METRICS_FILE, RUN_FILE
from iarm_torchrec.train.settings import SETTINGS_FILE, TrainSettings
from test_components import torchrun_command, trainer_args
from test_export_predict import _test_rows, _test_split_scores
from train_utils import checkpointed_run, train_run
import test_gpu  # its small IARM and batches

TABLE = "model.embedding_arch.embedding_bag_collection.embedding_bags.t_C1.weight"


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpointed_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def fp16_run(fp32_run: Path) -> Path:
    """The float32 run's twin (same data, seed and settings) with float16 tables."""
    out = fp32_run.parent / "ws1-checkpointed-fp16"
    train_run(fp32_run.parent.parent / "train-data", out, extra=["--checkpoint-every", "10", "--embedding-precision", "fp16"])
    return out


# ------------------------------------------------------------------ the setting


def test_setting_flag_config_file_and_settings_json(tmp_path: Path) -> None:
    assert TrainSettings().embedding_precision == "fp32"
    settings = TrainSettings.from_args(["--embedding-precision", "fp16"])
    assert settings.embedding_precision == "fp16"
    settings.save(tmp_path)
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["embedding_precision"] == "fp16"
    assert TrainSettings.from_args(["--config", str(tmp_path / SETTINGS_FILE)]).embedding_precision == "fp16"
    with pytest.raises(ValueError, match=r"embedding_precision must be one of \['fp32', 'fp16'\], got 'int8'"):
        TrainSettings.from_args(["--embedding-precision", "int8"])


def test_bf16_tables_are_refused_naming_the_kernel() -> None:
    with pytest.raises(ValueError, match="FBGEMM's CPU table kernels .* have no bfloat16 forward; use --embedding-precision fp16"):
        TrainSettings(embedding_precision="bf16")


def test_the_torchx_component_passes_the_flag_through() -> None:
    app = iarm_component.train("--embedding-precision", "fp16", dataset="synthetic", out="/runs/a")
    assert TrainSettings.from_args(trainer_args(torchrun_command(app))).embedding_precision == "fp16"


# ------------------------------------------------------------------ the sharded tables, on one gloo rank


def _shard(rank: int, world_size: int, result: Dict) -> None:
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    from iarm_torchrec.train.distributed import DistEnv
    from iarm_torchrec.train.sharding import OptimizerSettings, init_tables, local_shards, shard_model, table_configs

    env = DistEnv.from_environment("cpu")
    batch = test_gpu._batch(64, 0, torch.device("cpu"))
    for precision in ("fp32", "fp16"):
        torch.manual_seed(0)
        model = CTRTrain(test_gpu._config().build(torch.device("meta")))
        tables = table_configs(model)
        sharded = shard_model(model, env, OptimizerSettings(), precision)
        init_tables(sharded.model, tables, seed=0)
        state = sharded.model.state_dict()
        shards = [t for key in tables for _, t in local_shards(state[key])]
        ebc = sharded.model.module.model.embedding_arch.embedding_bag_collection  # ShardedEmbeddingBagCollection
        kernels = [e.emb_module for lookup in ebc._lookups for e in lookup._emb_modules]
        assert all(isinstance(k, SplitTableBatchedEmbeddingBagsCodegen) for k in kernels) and kernels
        losses = []
        for _ in range(5):
            loss, (_, logits, _) = sharded.model(batch)
            loss.backward()
            sharded.optimizer.step()
            sharded.optimizer.zero_grad()
            losses.append(float(loss))
        moments = [v for state in sharded.optimizer.state_dict()["state"].values() for v in state.values()]
        result[precision] = {
            "table_dtypes": sorted({str(t.dtype) for t in shards}),
            "table_bytes": sum(t.numel() * t.element_size() for t in shards),
            "kernel_bytes": sum(w.numel() * w.element_size() for k in kernels for w in k.split_embedding_weights()),
            "weights_precision": sorted({SparseType(k.weights_precision).name for k in kernels}),
            "output_dtype": sorted({SparseType.from_int(k.output_dtype).name for k in kernels}),
            "logits": str(logits.dtype),
            "moment_dtypes": sorted({str(m.dtype) for m in moments if getattr(m, "dtype", torch.int64).is_floating_point}),
            "losses": losses,
        }
    model = CTRTrain(test_gpu._config().build(torch.device("meta")))
    try:
        shard_model(model, env, OptimizerSettings(sparse="adam"), "fp16")
    except ValueError as error:
        result["adam"] = str(error)


@pytest.fixture(scope="module")
def sharded() -> Dict:
    result = multiprocessing.Manager().dict()
    run_ranks(_shard, result, world_size=1)
    return dict(result)


def test_fp16_tables_are_float16_in_half_the_bytes(sharded: Dict) -> None:
    fp32, fp16 = sharded["fp32"], sharded["fp16"]
    assert (fp32["table_dtypes"], fp16["table_dtypes"]) == (["torch.float32"], ["torch.float16"])
    assert (fp32["weights_precision"], fp16["weights_precision"]) == (["FP32"], ["FP16"])
    assert fp16["table_bytes"] * 2 == fp32["table_bytes"] > 0
    assert fp16["kernel_bytes"] * 2 == fp32["kernel_bytes"] > 0  # FBGEMM's own storage, not a copy


def test_fp16_tables_pool_into_float32_and_keep_float32_optimizer_state(sharded: Dict) -> None:
    fp16 = sharded["fp16"]
    assert fp16["output_dtype"] == ["FP32"] and fp16["logits"] == "torch.float32"
    assert fp16["moment_dtypes"] == ["torch.float32"]  # row-wise Adagrad's and the dense Adam's
    assert fp16["losses"][-1] < fp16["losses"][0]
    assert fp16["losses"] == pytest.approx(sharded["fp32"]["losses"], abs=2e-3)


def test_fp16_tables_with_a_non_fused_optimizer_are_refused(sharded: Dict) -> None:
    assert sharded["adam"] == (
        "embedding_precision fp16: FBGEMM's CPU kernels cannot fuse adam, so the tables would be fp16 parameters "
        "stepped by a torch.optim.Adam, whose fp16 moments underflow; use --sparse-optimizer rowwise_adagrad, "
        "adagrad or sgd, or --embedding-precision fp32"
    )


def test_the_run_refuses_it_before_writing_anything(fp32_run: Path, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="embedding_precision fp16: FBGEMM's CPU kernels cannot fuse adam"):
        train_run(fp32_run.parent.parent / "train-data", tmp_path / "run", extra=["--embedding-precision", "fp16", "--sparse-optimizer", "adam"])
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ a run with fp16 tables


def test_an_fp16_run_trains_like_the_fp32_run(fp16_run: Path, fp32_run: Path) -> None:
    fp16 = json.loads((fp16_run / METRICS_FILE).read_text())
    fp32 = json.loads((fp32_run / METRICS_FILE).read_text())
    assert fp16["epochs"][-1]["train_loss"] < fp16["epochs"][0]["train_loss"]
    assert fp16["valid_auc"] > 0.75
    assert abs(fp16["valid_auc"] - fp32["valid_auc"]) < 0.002  # measured 0.0004
    assert abs(fp16["test_auc"] - fp32["test_auc"]) < 0.002


def test_checkpoints_hold_fp16_tables_and_resume_ends_the_same(fp16_run: Path, tmp_path: Path) -> None:
    latest = CheckpointManager(fp16_run / CHECKPOINT_DIR).latest()
    metadata = FileSystemReader(str(latest)).read_metadata().state_dict_metadata
    assert metadata[f"model.{TABLE}"].properties.dtype == torch.float16
    copy = tmp_path / "resumed"
    shutil.copytree(fp16_run, copy)
    (copy / METRICS_FILE).unlink()
    shutil.rmtree(copy / CHECKPOINT_DIR / latest.name)  # resume from the one before
    resumed = train_run(fp16_run.parent.parent / "train-data", copy, extra=["--checkpoint-every", "10", "--embedding-precision", "fp16", "--resume"])
    original = json.loads((fp16_run / METRICS_FILE).read_text())
    assert "resumed from" in copy.with_name(copy.name + ".log").read_text()
    for key in ("test_auc", "test_logloss", "valid_auc", "steps"):
        assert resumed[key] == pytest.approx(original[key], abs=1e-6), key


def test_export_upcasts_and_predict_scores_as_the_training_did(fp16_run: Path, tmp_path: Path) -> None:
    exported = tmp_path / "fp16.pt"
    assert iarm(["export", str(fp16_run), "--out", str(exported)]) == 0
    metrics = json.loads((fp16_run / METRICS_FILE).read_text())
    model = load_exported(exported)
    table = model.embedding_arch.embedding_bag_collection.embedding_bags["t_C1"].weight
    assert table.dtype == torch.float32 and torch.equal(table, table.half().float())  # fp16 values, exactly
    data_dir = Path(json.loads((fp16_run / RUN_FILE).read_text())["data_dir"])
    logits, labels = _test_split_scores(model, data_dir)
    result = binary_metrics(logits, labels)
    assert result.auc == pytest.approx(metrics["test_auc"], abs=1e-5)
    assert result.logloss == pytest.approx(metrics["test_logloss"], abs=1e-5)

    rows = _test_rows(data_dir)
    (tmp_path / "test.txt").write_bytes(b"".join(rows))
    scores = predict(exported, tmp_path / "test.txt", tmp_path / "scores.txt", batch_size=700, progress=False)
    assert np.allclose(np.loadtxt(tmp_path / "scores.txt"), torch.sigmoid(logits).numpy(), atol=1e-6)
    assert binary_metrics(torch.logit(scores.double()), labels).auc == pytest.approx(metrics["test_auc"], abs=1e-5)

    assert iarm(["export", str(exported), "--serving", "--out", str(tmp_path / "serving")]) == 0
    maps, fields = run_attention(fp16_run, batch_size=1000)
    assert torch.isfinite(maps).all() and len(fields) == maps.shape[-1]
