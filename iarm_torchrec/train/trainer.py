"""The training run: one code path for one process and for N ranks under torchrun / TorchX.

:func:`train` (``iarm train`` / ``python -m iarm_torchrec.train``) does, on every rank:

1. joins the process group (:class:`~iarm_torchrec.train.distributed.DistEnv`);
2. finds or makes the preprocessed data (rank 0 preprocesses, the others wait);
3. builds the model from the feature spec on ``meta``, shards it with
   ``DistributedModelParallel`` and a fused sparse optimizer
   (:mod:`~iarm_torchrec.train.sharding`), and gives every table a seed-only initialisation;
4. trains with ``TrainPipelineSparseDist`` on GLOBAL batches split over the ranks;
5. after each epoch, evaluates AUC / log loss on the validation split over all ranks,
   checkpoints (also every ``checkpoint_every`` steps), and stops early when the AUC has not
   improved for ``early_stopping_patience`` epochs;
6. reloads the best checkpoint and evaluates it on the test split.

The run folder's files are listed in :mod:`~iarm_torchrec.train.layout`.

Fault injection for tests: with ``IARM_FAIL_AT_STEP=k`` in the environment, rank
``min(1, world_size - 1)`` exits with status 1 right after step ``k``, once per run folder
(a marker file keeps the restarted job from failing again).
"""

import dataclasses
import itertools
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from iarm_torchrec.data.cache import ground_truth_file
from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.data.spec import SPEC_FILE, FeatureSpec
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.registry import MODEL_CONFIGS, make_config, model_config_dict
from iarm_torchrec.train.checkpoint import CheckpointError, CheckpointManager, Progress, checkpoint_name
from iarm_torchrec.train.data import prepare_data
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.evaluate import EvalResult, evaluate
from iarm_torchrec.train.layout import CHECKPOINT_DIR, METRICS_FILE, MODEL_FILE, RUN_FILE, SUMMARY_FILE, TENSORBOARD_DIR
from iarm_torchrec.train.settings import TrainSettings
from iarm_torchrec.train.sharding import init_tables, shard_model, table_configs

logger = logging.getLogger(__name__)

FAIL_AT_STEP_ENV = "IARM_FAIL_AT_STEP"
_FAIL_MARKER = ".iarm-fail-injected"


def model_settings_for(name: str, settings: TrainSettings) -> Dict[str, Any]:
    """The model settings that model ``name``'s config takes."""
    accepted = {f.name for f in dataclasses.fields(MODEL_CONFIGS[name])} if name in MODEL_CONFIGS else set()
    return {k: v for k, v in settings.model_settings().items() if k in accepted}


class Trainer:
    """One run, on this rank. Build with the settings and the process group, then :meth:`fit`."""

    def __init__(self, settings: TrainSettings, env: DistEnv) -> None:
        if settings.batch_size % env.world_size:
            raise ValueError(
                f"batch_size {settings.batch_size} (global) must split evenly over {env.world_size} ranks"
            )
        self.settings = settings
        self.env = env
        self.run_dir = Path(settings.out)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            settings.save(self.run_dir)
        self.data_dir = prepare_data(settings, env)
        self.spec = FeatureSpec.load(self.data_dir)
        features = self.spec.to_feature_config(settings.embedding_dim)
        self.model_config = make_config(settings.model, features, **model_settings_for(settings.model, settings))
        if env.is_main:
            (self.run_dir / MODEL_FILE).write_text(json.dumps(model_config_dict(self.model_config), indent=2) + "\n")
            shutil.copyfile(self.data_dir / SPEC_FILE, self.run_dir / SPEC_FILE)
            _write_json(self.run_dir / RUN_FILE, {"data_dir": str(self.data_dir.resolve())})

        torch.manual_seed(settings.seed)  # the dense parameters: built on CPU, identical on every rank
        model = CTRTrain(self.model_config.build(torch.device("meta")))
        tables = table_configs(model)
        sharded = shard_model(
            model, env, settings.dense_optimizer, settings.lr, settings.sparse_optimizer, settings.sparse_lr
        )
        self.model = sharded.model
        self.optimizer = sharded.optimizer
        init_tables(self.model, tables, settings.seed)
        if env.is_main:
            logger.info("sharding plan:\n%s", sharded.plan)
        self.pipeline: TrainPipelineSparseDist = TrainPipelineSparseDist(self.model, self.optimizer, env.device)

        local_batch = settings.batch_size // env.world_size
        common = dict(batch_size=local_batch, rank=env.rank, world_size=env.world_size)
        self.train_loader = ShardedBatchLoader(
            self.data_dir, "train", shuffle=True, seed=settings.seed, drop_last=True, **common
        )
        self.valid_loader = ShardedBatchLoader(self.data_dir, "valid", drop_last=False, **common)
        self.test_loader = ShardedBatchLoader(self.data_dir, "test", drop_last=False, **common)
        self.checkpoints = CheckpointManager(self.run_dir / CHECKPOINT_DIR, env)
        self.writer = _tensorboard(self.run_dir) if env.is_main else None

    @property
    def steps_per_epoch(self) -> int:
        limit = self.settings.max_steps_per_epoch
        return min(len(self.train_loader), limit) if limit else len(self.train_loader)

    def resume(self) -> Progress:
        """The progress to start from: a fresh one, or the checkpoint ``settings.resume`` names."""
        choice = self.settings.resume
        if not choice:
            if self.checkpoints.complete():
                raise ValueError(
                    f"{self.run_dir} already holds checkpoints of a run: pass --resume to continue it, "
                    "or give another --out"
                )
            return Progress()
        path = self.checkpoints.latest() if choice == "latest" else Path(choice)
        if path is None:
            damaged = self.checkpoints.complete()
            if damaged:
                raise CheckpointError(f"every checkpoint in {self.checkpoints.root} is damaged ({damaged[-1].name} ...)")
            logger.info("no checkpoint in %s yet: starting afresh", self.checkpoints.root)
            return Progress()
        progress = self.checkpoints.load(path, self.model, self.optimizer)
        logger.info("resumed from %s (epoch %d, batch %d, step %d)", path, progress.epoch, progress.batch, progress.step)
        return progress

    def fit(self) -> Dict[str, Any]:
        """Train, validate, checkpoint; then test the best checkpoint. Returns the metrics."""
        progress = self.resume()
        while progress.epoch < self.settings.epochs and not progress.stopped_early:
            samples_per_s = self._train_epoch(progress)
            self._end_epoch(progress, samples_per_s)
        return self._finish(progress)

    def _train_epoch(self, progress: Progress) -> float:
        """Train the rest of ``progress.epoch``; returns the samples per second."""
        s, env = self.settings, self.env
        self.model.train()
        self.train_loader.set_epoch(progress.epoch, start_batch=progress.batch)
        batches: Iterator[Any] = itertools.islice(iter(self.train_loader), max(self.steps_per_epoch - progress.batch, 0))
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=progress.batch,
            desc=f"epoch {progress.epoch}",
            unit="step",
            disable=not env.is_main,
            dynamic_ncols=True,
            # in a log file (torchx, torchrun, nohup) every refresh is a line: refresh rarely there
            mininterval=0.1 if sys.stderr.isatty() else 30.0,
        )
        local_loss = torch.zeros((), dtype=torch.float64, device=env.device)
        start, start_step = time.perf_counter(), progress.step
        while True:
            try:
                loss, _, _ = self.pipeline.progress(batches)
            except StopIteration:
                break
            local_loss += loss.double()
            progress.batch += 1
            progress.step += 1
            bar.update(1)
            if progress.step % 20 == 0 and env.is_main:
                rate = (progress.step - start_step) * s.batch_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:,.0f}")
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", loss.item(), progress.step)
                    self.writer.add_scalar("train/samples_per_s", rate, progress.step)
            self._maybe_fail(progress.step)
            if s.checkpoint_every and progress.step % s.checkpoint_every == 0 and progress.batch < self.steps_per_epoch:
                self._sync_loss(progress, local_loss)
                self.checkpoints.save(self.model, self.optimizer, progress)
        bar.close()
        self._sync_loss(progress, local_loss)
        elapsed = time.perf_counter() - start
        return (progress.step - start_step) * s.batch_size / elapsed if elapsed > 0 else 0.0

    def _sync_loss(self, progress: Progress, local_loss: torch.Tensor) -> None:
        """Fold every rank's loss sum since the last sync into ``progress.loss_sum``."""
        total = local_loss.clone()
        dist.all_reduce(total)
        progress.loss_sum += float(total) / self.env.world_size
        local_loss.zero_()

    def _end_epoch(self, progress: Progress, samples_per_s: float) -> None:
        s = self.settings
        result = evaluate(self.pipeline, self.model, self.valid_loader, self.env)
        improved = result.auc > progress.best_auc
        record = {
            "epoch": progress.epoch,
            "step": progress.step,
            "train_loss": progress.loss_sum / max(progress.batch, 1),
            "valid_auc": result.auc,
            "valid_logloss": result.logloss,
            "samples_per_s": samples_per_s,
        }
        progress.history.append(record)
        if improved:
            progress.best_auc = result.auc
            progress.best_checkpoint = checkpoint_name(progress.step)
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        if s.early_stopping_patience and progress.epochs_without_improvement >= s.early_stopping_patience:
            progress.stopped_early = True
        progress.epoch += 1
        progress.batch = 0
        progress.loss_sum = 0.0
        if self.env.is_main:
            logger.info(
                "epoch %d: train loss %.5f, valid AUC %.5f, log loss %.5f%s",
                record["epoch"], record["train_loss"], result.auc, result.logloss, " (best)" if improved else "",
            )
            if self.writer is not None:
                for key in ("train_loss", "valid_auc", "valid_logloss"):
                    self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        self.checkpoints.save(self.model, self.optimizer, progress)

    def _finish(self, progress: Progress) -> Dict[str, Any]:
        if progress.best_checkpoint is None:
            raise RuntimeError("no epoch finished, so there is no model to test: check --epochs")
        best = self.checkpoints.root / progress.best_checkpoint
        self.checkpoints.load(best, self.model)
        test = evaluate(self.pipeline, self.model, self.test_loader, self.env)
        metrics = self._metrics(progress, test)
        if self.env.is_main:
            _write_json(self.run_dir / METRICS_FILE, metrics)
            (self.run_dir / SUMMARY_FILE).write_text(summary_text(metrics))
            if self.writer is not None:
                self.writer.add_scalar("test/auc", test.auc, progress.step)
                self.writer.add_scalar("test/logloss", test.logloss, progress.step)
                self.writer.close()
            logger.info("test AUC %.5f, log loss %.5f (%s)", test.auc, test.logloss, best)
        return metrics

    def _metrics(self, progress: Progress, test: EvalResult) -> Dict[str, Any]:
        best = max(progress.history, key=lambda r: r["valid_auc"])
        metrics: Dict[str, Any] = {
            "dataset": self.settings.dataset,
            "model": self.settings.model,
            "world_size": self.env.world_size,
            "steps": progress.step,
            "epochs": progress.history,
            "stopped_early": progress.stopped_early,
            "best_epoch": best["epoch"],
            "best_checkpoint": progress.best_checkpoint,
            "valid_auc": best["valid_auc"],
            "valid_logloss": best["valid_logloss"],
            "test_auc": test.auc,
            "test_logloss": test.logloss,
            "test_rows": test.rows,
        }
        truth_file = ground_truth_file(self.data_dir)
        if truth_file is not None:
            optimum = json.loads(truth_file.read_text())["bayes_optimal"]["test"]
            metrics["bayes_optimal_test_auc"] = optimum["auc"]
            metrics["bayes_optimal_test_logloss"] = optimum["log_loss"]
        return metrics

    def _maybe_fail(self, step: int) -> None:
        target = os.environ.get(FAIL_AT_STEP_ENV)
        if target is None or step != int(target) or self.env.rank != min(1, self.env.world_size - 1):
            return
        marker = self.run_dir / _FAIL_MARKER
        if marker.exists():
            return
        marker.write_text(f"rank {self.env.rank} failed on purpose after step {step}\n")
        logger.error("%s=%s: rank %d exits on purpose", FAIL_AT_STEP_ENV, target, self.env.rank)
        os._exit(1)


def summary_text(metrics: Dict[str, Any]) -> str:
    """A few readable lines about a finished run."""
    lines = [
        f"{metrics['model']} on {metrics['dataset']}, {metrics['world_size']} rank(s), {metrics['steps']} steps",
        "",
        "epoch  train_loss  valid_auc  valid_logloss  samples/s",
    ]
    for r in metrics["epochs"]:
        lines.append(
            f"{r['epoch']:>5}  {r['train_loss']:>10.5f}  {r['valid_auc']:>9.5f}  {r['valid_logloss']:>13.5f}  {r['samples_per_s']:>9,.0f}"
        )
    lines += ["", f"best epoch {metrics['best_epoch']} ({metrics['best_checkpoint']})" + (" - stopped early" if metrics["stopped_early"] else "")]
    lines.append(f"test AUC {metrics['test_auc']:.5f}, log loss {metrics['test_logloss']:.5f} ({metrics['test_rows']} rows)")
    if "bayes_optimal_test_auc" in metrics:
        gap = metrics["bayes_optimal_test_auc"] - metrics["test_auc"]
        lines.append(
            f"Bayes-optimal test AUC {metrics['bayes_optimal_test_auc']:.5f}, log loss "
            f"{metrics['bayes_optimal_test_logloss']:.5f} (AUC gap {gap:.5f})"
        )
    return "\n".join(lines) + "\n"


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _tensorboard(run_dir: Path) -> Optional[Any]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None
    return SummaryWriter(str(run_dir / TENSORBOARD_DIR))


def train(settings: TrainSettings) -> Dict[str, Any]:
    """Run ``settings`` on this rank (alone, or as one rank of a launched job)."""
    env = DistEnv.from_environment(settings.device)
    try:
        return Trainer(settings, env).fit()
    finally:
        env.close()


def setup_logging() -> None:
    """INFO from this package (rank 0 only), warnings from everything else."""
    package = logging.getLogger("iarm_torchrec")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
        package.propagate = False
    package.setLevel(logging.INFO if int(os.environ.get("RANK", 0)) == 0 else logging.WARNING)
