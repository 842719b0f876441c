"""A trained run as one self-contained file: unsharded weights, model config, feature spec, vocabulary.

``iarm export RUN --out FILE`` gathers the run's best checkpoint (every table whole, however
it was sharded) into one process with ``torch.distributed.checkpoint``, and saves, with
``torch.save`` into a temporary file renamed when complete::

    {"format": "iarm_torchrec.export/1",
     "model_config": {"model": name, "config": {...}},   # registry.model_config_dict
     "feature_spec": {...},                               # the dataset's spec.json
     "data_files": {"spec.json": uint8 tensor, "vocab/C1.npy": uint8 tensor, ...},
     "state_dict": {name: tensor},                        # the bare model's weights
     "sha256": hex}                                       # of everything above (integrity.sha256_of_tree)

Everything in it is a tensor or plain data, so ``torch.load(FILE, weights_only=True)``
reads it. The checksum is verified on every load, so a damaged file is refused naming it
(as is a truncated or non-export file), never loaded with changed weights.
:func:`load_exported` rebuilds the model in one process; ``data_files`` (the
preprocessed folder without its splits) lets :mod:`~iarm_torchrec.inference.predict` encode new
raw files with the training vocabulary.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from iarm_torchrec.data.preprocess import VOCAB_DIR
from iarm_torchrec.data.spec import SPEC_FILE, FeatureSpec
from iarm_torchrec.files import PathLike, atomic_path
from iarm_torchrec.integrity import sha256_of_tree
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.registry import config_from_dict

FORMAT = "iarm_torchrec.export/1"


def best_checkpoint(run_dir: Path) -> Path:
    """The run's best checkpoint (``metrics.json``), else its newest intact one."""
    from iarm_torchrec.train.checkpoint import CheckpointError, CheckpointManager
    from iarm_torchrec.train.layout import CHECKPOINT_DIR, METRICS_FILE

    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        name = json.loads(metrics.read_text()).get("best_checkpoint")
        if name:
            return run_dir / CHECKPOINT_DIR / name
    root = run_dir / CHECKPOINT_DIR
    latest = CheckpointManager(root).latest()
    if latest is None:
        raise CheckpointError(f"{root}: no complete checkpoint to export; train first (iarm train --out {run_dir})")
    return latest


def export_run(run_dir: PathLike, out_file: PathLike, checkpoint: Optional[PathLike] = None) -> Path:
    """Write ``run_dir``'s model (``checkpoint`` or the best one) to ``out_file``; returns its path."""
    payload = export_payload(run_dir, checkpoint)
    payload["sha256"] = sha256_of_tree(payload)  # checked by read_export
    out = Path(out_file)
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return out


def export_payload(run_dir: PathLike, checkpoint: Optional[PathLike] = None) -> Dict[str, Any]:
    """What :func:`export_run` writes, in memory (the serving export builds on it too)."""
    # training's modules only here and in best_checkpoint: reading an export (iarm predict,
    # serving) does not import them (torchmetrics and the sharding planners: ~0.5 s of start-up)
    from iarm_torchrec.train.checkpoint import CheckpointManager
    from iarm_torchrec.train.layout import METRICS_FILE, MODEL_FILE, RUN_FILE, SETTINGS_FILE

    run_dir = Path(run_dir)
    for name in (MODEL_FILE, SPEC_FILE, RUN_FILE):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: missing; is {run_dir} a run folder of iarm train?")
    path = Path(checkpoint) if checkpoint else best_checkpoint(run_dir)
    model_config = json.loads((run_dir / MODEL_FILE).read_text())
    wrapper = CTRTrain(config_from_dict(model_config).build(torch.device("cpu")))
    CheckpointManager(path.parent).load(path, wrapper)  # one process: every shard gathered whole
    data_dir = Path(json.loads((run_dir / RUN_FILE).read_text())["data_dir"])
    if not (data_dir / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{data_dir}: the run's preprocessed data (named in {run_dir / RUN_FILE}) is gone; "
                                "export needs its vocabularies: rerun iarm train to rebuild it")
    metrics = json.loads((run_dir / METRICS_FILE).read_text()) if (run_dir / METRICS_FILE).is_file() else {}
    settings = json.loads((run_dir / SETTINGS_FILE).read_text()) if (run_dir / SETTINGS_FILE).is_file() else {}
    return {
        "format": FORMAT,
        "model_config": model_config,
        "feature_spec": json.loads((run_dir / SPEC_FILE).read_text()),
        "data_files": _data_files(data_dir),
        "state_dict": wrapper.model.state_dict(),
        "checkpoint": path.name,
        "training_run": {  # for the record (serving's /metadata); plain data, so weights_only reads it
            "run_dir": str(run_dir.resolve()),
            "checkpoint": path.name,
            **{k: metrics[k] for k in ("test_auc", "test_logloss", "best_epoch") if isinstance(metrics.get(k), (int, float))},
            # the dense arches' compute type in training (as asked: "auto" stays "auto"), which
            # iarm predict scores in by default
            **({"precision": settings["precision"]} if isinstance(settings.get("precision"), str) else {}),
        },
    }


def _data_files(data_dir: Path) -> Dict[str, torch.Tensor]:
    """What encoding new rows needs of the preprocessed folder (its spec, with the numeric
    statistics, and its vocabularies), as byte tensors by relative path."""
    vocab_dir = data_dir / FeatureSpec.load(data_dir).options.get("vocab_dir", VOCAB_DIR)
    paths = [data_dir / SPEC_FILE] + (sorted(p for p in vocab_dir.rglob("*") if p.is_file()) if vocab_dir.is_dir() else [])
    return {
        p.relative_to(data_dir).as_posix(): torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths
    }


def read_export(file: PathLike) -> Dict[str, Any]:
    """The exported payload (``weights_only=True``), checked for its format."""
    if not Path(file).is_file():
        raise FileNotFoundError(f"{file}: no such exported model (make one with iarm export)")
    try:
        payload = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as error:  # truncated zip, pickle of another kind, random bytes...
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        # torch's own text for a pickle it refuses suggests weights_only=False: never pass that on
        reason = type(error).__name__ + (f": {first}" if first and "weights_only" not in first.lower() else "")
        raise ValueError(
            f"{file}: not a readable iarm export: damaged, truncated or another kind of file ({reason}); "
            "export the run again with iarm export"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{file}: not an iarm export (expected format {FORMAT!r}); make one with iarm export")
    expected = payload.pop("sha256", None)
    if expected is None:
        raise ValueError(f"{file}: the export carries no checksum, so its integrity cannot be checked; export the run again")
    if sha256_of_tree(payload) != expected:
        raise ValueError(f"{file}: checksum mismatch: the exported model is damaged; export the run again with iarm export")
    return payload


def load_exported(file: PathLike, model_class: Optional[type] = None) -> nn.Module:
    """The exported model, rebuilt on CPU in eval mode; ``model_class`` may be a subclass of
    the exported model's class (e.g. an ``IARM`` subclass with a replaced arch)."""
    return model_from_payload(read_export(file), model_class)


def model_from_payload(payload: Dict[str, Any], model_class: Optional[type] = None) -> nn.Module:
    """The model of an export already read by :func:`read_export`, on CPU in eval mode."""
    config = config_from_dict(payload["model_config"])
    cpu = torch.device("cpu")
    model = config.build(cpu) if model_class is None else config.build(cpu, model_class)
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def feature_spec(file: PathLike) -> FeatureSpec:
    """The feature spec an export was trained on."""
    return FeatureSpec(**read_export(file)["feature_spec"])


def write_data_files(payload: Dict[str, Any], folder: Path) -> Path:
    """Recreate the exported preprocessed folder (spec and vocabularies, no splits) in ``folder``."""
    for name, data in payload["data_files"].items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.numpy().tobytes())
    return folder
