"""Our side of the benchmark: one epoch the way ``iarm train`` trains, on this rank.

The model is built and sharded by the trainer's own functions
(:func:`~iarm_torchrec.train.sharding.shard_model`: ``DistributedModelParallel`` over a gloo
group, the sparse optimizer fused into backward by FBGEMM where it can be), fed by the
trainer's :class:`~iarm_torchrec.data.loader.ShardedBatchLoader` (its training layout) through
``TrainPipelineSparseDist``, and validated by :func:`~iarm_torchrec.train.evaluate.evaluate`.
Nothing here re-implements a training step; it only adds the step clock.
"""

import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from _common import StepClock, peak_rss_mib, window_rates
from iarm_torchrec.allocator import reuse_freed_memory
from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.data.spec import FeatureSpec
from iarm_torchrec.models.registry import make_config
from iarm_torchrec.train.builder import sharded_model
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.evaluate import evaluate
from iarm_torchrec.train.settings import TrainSettings


def build(data_dir: Path, settings: TrainSettings, env: DistEnv) -> Any:
    """The sharded training model and its pipeline, exactly as :class:`~iarm_torchrec.train.trainer.Trainer` makes them."""
    spec = FeatureSpec.load(data_dir)
    config = make_config(settings.model, spec.to_feature_config(settings.embedding_dim), **settings.model_config)
    sharded = sharded_model(config, spec, settings, env)
    pipeline = TrainPipelineSparseDist(sharded.model, sharded.optimizer, env.device)
    return sharded, pipeline


def run(job: Dict[str, Any]) -> Dict[str, Any]:
    """Train one epoch of ``job["model"]`` and validate it; the rank-0 result (all ranks return one)."""
    reuse_freed = reuse_freed_memory()  # as iarm train does (unless IARM_MALLOC=default)
    env = DistEnv.from_environment(job.get("device", "cpu"))
    try:
        return {**_run(job, env), "malloc_reuses_freed_memory": reuse_freed}
    finally:
        env.close()


def _run(job: Dict[str, Any], env: DistEnv) -> Dict[str, Any]:
    data_dir = Path(job["data_dir"])
    settings = TrainSettings(
        model=job["model"],
        embedding_dim=job["embedding_dim"],
        model_config={"num_layers": job["num_layers"], "num_heads": job["num_heads"], "head_dim": job["head_dim"]},
        batch_size=job["batch_size"],
        dense_optimizer="adam",
        lr=job["lr"],
        sparse_optimizer=job["sparse_optimizer"],
        sparse_lr=job["sparse_lr"],
        seed=job["seed"],
        precision=job.get("precision", "fp32"),
    )
    sharded, pipeline = build(data_dir, settings, env)
    local_batch = settings.batch_size // env.world_size
    common = dict(batch_size=local_batch, rank=env.rank, world_size=env.world_size)
    loader = ShardedBatchLoader(data_dir, "train", shuffle=True, seed=settings.seed, drop_last=True, **common)
    steps = min(len(loader), job["max_steps"]) if job.get("max_steps") else len(loader)
    sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
    clock = StepClock()
    batches = iter(loader)
    sharded.model.train()
    for _ in range(steps):
        pipeline.progress(batches)
        sync()  # on a GPU, time the work, not its launch
        clock.tick()
    epoch_s = time.perf_counter() - clock.start
    valid_loader = ShardedBatchLoader(data_dir, "valid", drop_last=False, **common)
    start = time.perf_counter()
    result = evaluate(pipeline, sharded.model, valid_loader, env)
    out = window_rates(clock.times, settings.batch_size, job["warmup"], cpu=clock.cpu)
    out.update(
        epoch_seconds=epoch_s,
        valid_auc=result.auc,
        valid_logloss=result.logloss,
        valid_rows=result.rows,
        eval_seconds=time.perf_counter() - start,
        peak_rss_mib=peak_rss_mib(),
        sparse_fused=sharded.sparse_fused,
        world_size=env.world_size,
        rank=env.rank,
        device=str(env.device),
    )
    return out


def loader_rate(data_dir: str, batch_size: int, prefetch: int, max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Batches/s of the training loader alone (shuffled, one epoch or ``max_batches``)."""
    loader = ShardedBatchLoader(data_dir, "train", batch_size, shuffle=True, seed=0, drop_last=True, prefetch=prefetch)
    n = min(len(loader), max_batches) if max_batches else len(loader)
    clock = StepClock()
    for i, _ in zip(range(n), loader):
        clock.tick()
    rates = window_rates(clock.times, 1, warmup=min(2, n // 4))
    return {
        "prefetch": prefetch,
        "batch_size": batch_size,
        "batches": n,
        "median_batches_per_s": rates["median_samples_per_s"],
        "span_batches_per_s": rates["span_samples_per_s"],
    }
