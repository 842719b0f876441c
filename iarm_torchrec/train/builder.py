"""Settings + process group -> everything a run trains with: data, model, sharding, loaders, writers.

:func:`build_run` does, on every rank, what has to happen before the first step:

1. refuses what cannot work, before it writes anything: a global batch that does not split over
   the ranks, float16 tables that a non-fused optimizer would step, a fresh start into a run
   folder that already holds checkpoints, a ``--resume`` whose settings differ from the run's
   in more than :data:`RESUME_MAY_CHANGE`; then rank 0
   locks the run folder for the whole run (:mod:`~iarm_torchrec.locks`: a second training into
   the same ``--out`` is refused, naming the owner);
2. finds or makes the preprocessed data (rank 0 preprocesses, the others wait);
3. builds the model from the feature spec on ``meta`` through the registry, shards it with
   ``DistributedModelParallel`` and a fused sparse optimizer
   (:mod:`~iarm_torchrec.train.sharding`), and gives every table a seed-only initialisation;
4. makes the loaders (step ``k`` is global batch ``k`` for any world size), the checkpoint
   manager and, on rank 0, the run folder's description files and TensorBoard's writer.

The loop that trains with it is :class:`~iarm_torchrec.train.trainer.Trainer`.
"""

import json
import logging

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from iarm_torchrec.data.cache import DataSource, prepare_data
from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.data.spec import SPEC_FILE, FeatureSpec
from iarm_torchrec.files import atomic_write_bytes, atomic_write_json, strict_json
from iarm_torchrec.locks import acquire, release
from iarm_torchrec.models.config import ModelConfig
from iarm_torchrec.models.ctr_train import CTRTrain, resolve_precision
from iarm_torchrec.models.field_model import FieldModel
from iarm_torchrec.models.registry import make_config, model_config_dict
from iarm_torchrec.train.checkpoint import CheckpointManager
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.layout import CHECKPOINT_DIR, MODEL_FILE, RUN_FILE, TENSORBOARD_DIR
from iarm_torchrec.train.settings import SETTINGS_FILE, TrainSettings
from iarm_torchrec.train.sharding import ShardedModel, check_table_precision, init_tables, shard_model, table_configs

logger = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What one rank trains with; made by :func:`build_run`.

    Attributes:
        settings / env: what the run was told, and this rank's process group.
        run_dir: the run folder (``settings.out``).
        data_dir: the preprocessed dataset (``spec.json`` and the split shards).
        spec: its feature spec.
        model_config: the validated config of the model (over ``spec``'s fields).
        model: ``DistributedModelParallel(CTRTrain(model))``.
        optimizer: the dense optimizer combined with the fused sparse one.
        train_loader / valid_loader / test_loader: this rank's share of each split.
        checkpoints: the run's checkpoints.
        writer: TensorBoard's ``SummaryWriter`` on rank 0 when TensorBoard is installed.
    """

    settings: TrainSettings
    env: DistEnv
    run_dir: Path
    data_dir: Path
    spec: FeatureSpec
    model_config: ModelConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: ShardedBatchLoader
    valid_loader: ShardedBatchLoader
    test_loader: ShardedBatchLoader
    checkpoints: CheckpointManager
    writer: Optional[Any]
    lock: Optional[Path] = None

    def close(self) -> None:
        """Release the run folder's lock (rank 0), when the run ends or fails."""
        if self.lock is not None:
            release(self.lock)
            self.lock = None


RESUME_MAY_CHANGE = frozenset(
    {"epochs", "checkpoint_every", "early_stopping_patience", "resume", "out", "device", "cache_dir", "max_steps_per_epoch"}
)
"""Settings a ``--resume`` may change; any other change would make the resumed run another run."""


def data_source(settings: TrainSettings) -> DataSource:
    """What ``settings`` preprocess: dataset, raw source, cache root, options, synthetic rows."""
    return DataSource(
        dataset=settings.dataset,
        data_dir=settings.data_dir,
        cache_root=settings.cache_root,
        options=settings.preprocess_options(),
        synthetic_rows=settings.synthetic_rows,
    )


def check_startable(settings: TrainSettings, env: DistEnv, checkpoints: CheckpointManager) -> None:
    """Refuse a run that cannot start, before anything is written."""
    if settings.batch_size % env.world_size:
        raise ValueError(f"batch_size {settings.batch_size} (global) must split evenly over {env.world_size} ranks")
    if not settings.resume and checkpoints.complete():
        raise ValueError(
            f"{settings.out} already holds checkpoints of a run: pass --resume to continue it, or give another --out"
        )
    check_table_precision(settings.embedding_precision, settings.sparse_optimizer, env.device)
    if settings.resume:
        check_resume_settings(settings)


def check_resume_settings(settings: TrainSettings) -> None:
    """Refuse a ``--resume`` whose settings differ from the run folder's ``settings.json`` in
    anything but :data:`RESUME_MAY_CHANGE` (one message listing every change, old -> new)."""
    saved_file = Path(settings.out) / SETTINGS_FILE
    if not saved_file.is_file():
        return
    try:
        saved = json.loads(saved_file.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{saved_file}: cannot be read to compare with the resumed settings ({error})") from None
    defaults = TrainSettings().to_dict()
    new = json.loads(json.dumps(strict_json(settings.to_dict())))
    changed = [
        f"{key} {json.dumps(saved.get(key, defaults.get(key)))} -> {json.dumps(value)}"
        for key, value in new.items()
        if key not in RESUME_MAY_CHANGE and saved.get(key, defaults.get(key)) != value
    ]
    if changed:
        raise ValueError(
            f"{settings.out}: --resume with settings that differ from the run's {saved_file}: {'; '.join(changed)}. "
            f"Only {', '.join(sorted(RESUME_MAY_CHANGE - {'resume', 'out'}))} may change on resume; "
            "give another --out to train with the new settings"
        )


def build_run(settings: TrainSettings, env: DistEnv) -> TrainingRun:
    """Everything this rank trains ``settings`` with (see the module docstring)."""
    run_dir = Path(settings.out)
    checkpoints = CheckpointManager(run_dir / CHECKPOINT_DIR, env)
    check_startable(settings, env, checkpoints)
    lock = acquire(run_dir, "iarm train") if env.is_main else None
    try:
        return _build(settings, env, run_dir, checkpoints, lock)
    except BaseException:
        if lock is not None:
            release(lock)
        raise


def sharded_model(model_config: ModelConfig, spec: FeatureSpec, settings: TrainSettings, env: DistEnv) -> ShardedModel:
    """``DistributedModelParallel(CTRTrain(model))`` and its optimizer: the model built on
    ``meta`` with the seed's dense parameters (identical on every rank), started at the training
    click rate, sharded with the settings' optimizers and table precision, tables initialised from
    the seed alone."""
    torch.manual_seed(settings.seed)  # the dense parameters: built on CPU, identical on every rank
    bare = model_config.build(torch.device("meta"))
    if isinstance(bare, FieldModel):
        bare.start_at_click_rate(spec.click_rate("train"))
    precision = resolve_precision(settings.precision, env.device.type)
    if settings.precision == "auto":
        logger.info("precision auto: %s (%s bf16 on %s)", precision, "native" if precision == "bf16" else "no native", env.device.type)
    model = CTRTrain(bare, precision, env.device.type)
    tables = table_configs(model)
    sharded = shard_model(model, env, settings.optimizer_settings(), settings.embedding_precision)
    init_tables(sharded.model, tables, settings.seed)
    return sharded


def _build(
    settings: TrainSettings, env: DistEnv, run_dir: Path, checkpoints: CheckpointManager, lock: Optional[Path]
) -> TrainingRun:
    data_dir = prepare_data(data_source(settings), env.is_main, env.barrier)
    spec = FeatureSpec.load(data_dir)
    model_config = make_config(settings.model, spec.to_feature_config(settings.embedding_dim), **settings.model_config)
    if env.is_main:
        write_run_files(run_dir, settings, model_config, data_dir)

    sharded = sharded_model(model_config, spec, settings, env)
    if env.is_main:
        logger.info("sharding plan:\n%s", sharded.plan)

    local = dict(batch_size=settings.batch_size // env.world_size, rank=env.rank, world_size=env.world_size)
    return TrainingRun(
        settings=settings,
        env=env,
        run_dir=run_dir,
        data_dir=data_dir,
        spec=spec,
        model_config=model_config,
        model=sharded.model,
        optimizer=sharded.optimizer,
        train_loader=ShardedBatchLoader(data_dir, "train", shuffle=True, seed=settings.seed, drop_last=True, **local),
        valid_loader=ShardedBatchLoader(data_dir, "valid", drop_last=False, **local),
        test_loader=ShardedBatchLoader(data_dir, "test", drop_last=False, **local),
        checkpoints=checkpoints,
        writer=tensorboard_writer(run_dir) if env.is_main else None,
        lock=lock,
    )


def write_run_files(run_dir: Path, settings: TrainSettings, model_config: ModelConfig, data_dir: Path) -> None:
    """The run folder's description: ``settings.json``, ``model.json``, ``spec.json``, ``run.json``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    settings.save(run_dir)
    atomic_write_json(run_dir / MODEL_FILE, model_config_dict(model_config))
    atomic_write_bytes(run_dir / SPEC_FILE, (data_dir / SPEC_FILE).read_bytes())
    atomic_write_json(run_dir / RUN_FILE, {"data_dir": str(data_dir.resolve())})


def tensorboard_writer(run_dir: Path) -> Optional[Any]:
    """TensorBoard's ``SummaryWriter`` into ``run_dir/tensorboard``, or ``None`` (with a note)
    when ``tensorboard`` is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR))
