"""The training loop: one code path for one process and for N ranks under torchrun / TorchX.

:func:`train` (``iarm train`` / ``python -m iarm_torchrec.train``) builds the run on every rank
(:func:`~iarm_torchrec.train.builder.build_run`: data, sharded model, loaders) and hands it to
:class:`Trainer`, whose loop reads like TorchRec's own ``train_pipeline`` examples:

1. ``TrainPipelineSparseDist.progress`` over GLOBAL batches split over the ranks, until the
   epoch ends;
2. after each epoch, AUC / log loss on the validation split over all ranks, a checkpoint (also
   every ``checkpoint_every`` steps), and early stopping when the AUC has not improved for
   ``early_stopping_patience`` epochs;
3. the best checkpoint reloaded and evaluated on the test split.

After every step the loop calls the run's step callbacks (``callbacks``) with the trainer and
the progress: a place for a user's logging or profiling, and for the tests' fault injection.
The run folder's files are listed in :mod:`~iarm_torchrec.train.layout`.
"""

import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from tqdm import tqdm

from iarm_torchrec.data.cache import ground_truth_file
from iarm_torchrec.files import atomic_write_json, atomic_write_text
from iarm_torchrec.train.builder import TrainingRun, build_run
from iarm_torchrec.train.checkpoint import CheckpointError, Progress, checkpoint_name, load_with_fallback
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.evaluate import EvalResult, evaluate
from iarm_torchrec.train.guards import check_loss, finite_or_worst, require_best
from iarm_torchrec.train.layout import METRICS_FILE, SUMMARY_FILE
from iarm_torchrec.train.schedule import LearningRateSchedule
from iarm_torchrec.train.settings import TrainSettings

logger = logging.getLogger(__name__)

StepCallback = Callable[["Trainer", Progress], None]
"""Called after every training step with the trainer and the progress so far."""
EpochCallback = Callable[["Trainer", Progress, Dict[str, Any]], None]
"""Called after every epoch's validation with the trainer, the progress and the epoch's record
(``valid_auc``, ``valid_logloss``, ...); it may raise to stop the run (e.g. a pruned trial)."""


def score(record: Dict[str, Any], monitor: str) -> float:
    """The monitored validation metric as a score, higher is better (``auc``, or ``-logloss``);
    ``-inf`` when it is not finite, so a diverged epoch is never the best."""
    return finite_or_worst(record["valid_auc"] if monitor == "auc" else -float(record["valid_logloss"]))


class Trainer:
    """Trains one :class:`~iarm_torchrec.train.builder.TrainingRun` on this rank: :meth:`fit`.

    Args:
        run: what :func:`~iarm_torchrec.train.builder.build_run` made.
        callbacks: called after every training step (see :data:`StepCallback`).
        epoch_callbacks: called after every epoch's validation (see :data:`EpochCallback`).
    """

    def __init__(
        self, run: TrainingRun, callbacks: Sequence[StepCallback] = (), epoch_callbacks: Sequence[EpochCallback] = ()
    ) -> None:
        self.run = run
        self.settings = s = run.settings
        self.env = run.env
        self.callbacks = list(callbacks)
        self.epoch_callbacks = list(epoch_callbacks)
        self.pipeline: TrainPipelineSparseDist = TrainPipelineSparseDist(run.model, run.optimizer, run.env.device)
        self.schedule = LearningRateSchedule(run.optimizer, s.lr_warmup_steps, s.lr_plateau_factor, s.lr_plateau_patience)

    @property
    def steps_per_epoch(self) -> int:
        limit = self.settings.max_steps_per_epoch
        return min(len(self.run.train_loader), limit) if limit else len(self.run.train_loader)

    def resume(self) -> Progress:
        """The progress to start from: a fresh one, or the checkpoint ``settings.resume`` names."""
        choice = self.settings.resume
        if not choice:  # a fresh start: build_run refused a folder that holds checkpoints
            return Progress()
        path = self.run.checkpoints.latest() if choice == "latest" else Path(choice)
        if path is None:
            damaged = self.run.checkpoints.complete()
            if damaged:
                raise CheckpointError(f"every checkpoint in {self.run.checkpoints.root} is damaged ({damaged[-1].name} ...)")
            logger.info("no checkpoint in %s yet: starting afresh", self.run.checkpoints.root)
            return Progress()
        path, progress = load_with_fallback(self.run.checkpoints, path, self.run.model, self.run.optimizer, choice == "latest")
        logger.info("resumed from %s (epoch %d, batch %d, step %d)", path, progress.epoch, progress.batch, progress.step)
        return progress

    def fit(self, test: bool = True) -> Dict[str, Any]:
        """Train, validate, checkpoint; then test the best checkpoint (unless ``test`` is
        False: hyperparameter search never reads the test split). Returns the metrics."""
        progress = self.resume()
        self.schedule.apply(progress.step, progress.plateau_scale)
        while progress.epoch < self.settings.epochs and not progress.stopped_early:
            samples_per_s = self._train_epoch(progress)
            self._end_epoch(progress, samples_per_s)
        return self._finish(progress, test)

    def _train_epoch(self, progress: Progress) -> float:
        """Train the rest of ``progress.epoch``; returns the samples per second."""
        s, env = self.settings, self.env
        self.run.model.train()
        self.run.train_loader.set_epoch(progress.epoch, start_batch=progress.batch)
        batches: Iterator[Any] = itertools.islice(iter(self.run.train_loader), max(self.steps_per_epoch - progress.batch, 0))
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
            if self.schedule.active:
                self.schedule.apply(progress.step, progress.plateau_scale)
            try:
                loss, _, _ = self.pipeline.progress(batches)
            except StopIteration:
                break
            check_loss(loss, progress, s)
            local_loss += loss.double()
            progress.batch += 1
            progress.step += 1
            bar.update(1)
            if progress.step % 20 == 0 and env.is_main:
                rate = (progress.step - start_step) * s.batch_size / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss.item():.4f}", samples_per_s=f"{rate:,.0f}")
                if self.run.writer is not None:
                    self.run.writer.add_scalar("train/loss", loss.item(), progress.step)
                    self.run.writer.add_scalar("train/samples_per_s", rate, progress.step)
            for callback in self.callbacks:
                callback(self, progress)
            if s.checkpoint_every and progress.step % s.checkpoint_every == 0 and progress.batch < self.steps_per_epoch:
                self._sync_loss(progress, local_loss)
                self.run.checkpoints.save(self.run.model, self.run.optimizer, progress)
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
        result = evaluate(self.pipeline, self.run.model, self.run.valid_loader, self.env)
        record = {
            "epoch": progress.epoch,
            "step": progress.step,
            "train_loss": progress.loss_sum / max(progress.batch, 1),
            "valid_auc": result.auc,
            "valid_logloss": result.logloss,
            "valid_ne": result.ne,
            "valid_calibration": result.calibration,
            "lr_scale": self.schedule.factor(progress.step, progress.plateau_scale),
            "samples_per_s": samples_per_s,
        }
        progress.history.append(record)
        improved = score(record, s.monitor) > progress.best_score
        if improved:
            progress.best_score = score(record, s.monitor)
            progress.best_checkpoint = checkpoint_name(progress.step)
            progress.epochs_without_improvement = 0
        else:
            progress.epochs_without_improvement += 1
        progress.plateau_scale = self.schedule.next_plateau_scale(progress.plateau_scale, progress.epochs_without_improvement)
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
            if self.run.writer is not None:
                for key in ("train_loss", "valid_auc", "valid_logloss", "valid_ne", "valid_calibration", "lr_scale"):
                    self.run.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
                self.run.writer.flush()
        self.run.checkpoints.save(self.run.model, self.run.optimizer, progress)
        for callback in self.epoch_callbacks:
            callback(self, progress, record)

    def _finish(self, progress: Progress, test: bool) -> Dict[str, Any]:
        require_best(progress)
        best = self.run.checkpoints.root / progress.best_checkpoint
        result: Optional[EvalResult] = None
        if test:
            self.run.checkpoints.load(best, self.run.model)
            result = evaluate(self.pipeline, self.run.model, self.run.test_loader, self.env)
        metrics = self._metrics(progress, result)
        if self.env.is_main:
            atomic_write_json(self.run.run_dir / METRICS_FILE, metrics)
            atomic_write_text(self.run.run_dir / SUMMARY_FILE, summary_text(metrics))
            if self.run.writer is not None:
                if result is not None:
                    for key in ("auc", "logloss", "ne", "calibration"):
                        self.run.writer.add_scalar(f"test/{key}", getattr(result, key), progress.step)
                self.run.writer.close()
            if result is not None:
                logger.info("test AUC %.5f, log loss %.5f, NE %.4f, calibration %.3f (%s)",
                            result.auc, result.logloss, result.ne, result.calibration, best)  # fmt: skip
        return metrics

    def _metrics(self, progress: Progress, test: Optional[EvalResult]) -> Dict[str, Any]:
        best = max(progress.history, key=lambda r: score(r, self.settings.monitor))
        metrics: Dict[str, Any] = {
            "dataset": self.settings.dataset,
            "model": self.settings.model,
            "world_size": self.env.world_size,
            "steps": progress.step,
            "epochs": progress.history,
            "stopped_early": progress.stopped_early,
            "best_epoch": best["epoch"],
            "best_checkpoint": progress.best_checkpoint,
            "monitor": self.settings.monitor,
            "valid_auc": best["valid_auc"],
            "valid_logloss": best["valid_logloss"],
            "valid_ne": best["valid_ne"],
            "valid_calibration": best["valid_calibration"],
        }
        if test is not None:
            metrics.update(
                test_auc=test.auc, test_logloss=test.logloss, test_ne=test.ne, test_calibration=test.calibration,
                test_click_rate=test.click_rate, test_rows=test.rows,
            )  # fmt: skip
        truth_file = ground_truth_file(self.run.data_dir)
        if truth_file is not None:
            optimum = json.loads(truth_file.read_text())["bayes_optimal"]["test"]
            metrics["bayes_optimal_test_auc"] = optimum["auc"]
            metrics["bayes_optimal_test_logloss"] = optimum["log_loss"]
        return metrics



def summary_text(metrics: Dict[str, Any]) -> str:
    """A few readable lines about a finished run."""
    lines = [
        f"{metrics['model']} on {metrics['dataset']}, {metrics['world_size']} rank(s), {metrics['steps']} steps",
        "",
        "epoch  train_loss  valid_auc  valid_logloss  valid_ne  calibration  lr_scale  samples/s",
    ]
    for r in metrics["epochs"]:
        lines.append(
            f"{r['epoch']:>5}  {r['train_loss']:>10.5f}  {r['valid_auc']:>9.5f}  {r['valid_logloss']:>13.5f}  "
            f"{r['valid_ne']:>8.4f}  {r['valid_calibration']:>11.3f}  {r['lr_scale']:>8.3g}  {r['samples_per_s']:>9,.0f}"
        )
    best = f"best epoch {metrics['best_epoch']} by valid {metrics['monitor']} ({metrics['best_checkpoint']})"
    lines += ["", best + (" - stopped early" if metrics["stopped_early"] else "")]
    if "test_auc" in metrics:
        lines.append(
            f"test AUC {metrics['test_auc']:.5f}, log loss {metrics['test_logloss']:.5f}, NE {metrics['test_ne']:.4f}, "
            f"calibration {metrics['test_calibration']:.3f} ({metrics['test_rows']} rows)"
        )
    if "bayes_optimal_test_auc" in metrics and "test_auc" in metrics:
        gap = metrics["bayes_optimal_test_auc"] - metrics["test_auc"]
        lines.append(
            f"Bayes-optimal test AUC {metrics['bayes_optimal_test_auc']:.5f}, log loss "
            f"{metrics['bayes_optimal_test_logloss']:.5f} (AUC gap {gap:.5f})"
        )
    return "\n".join(lines) + "\n"


def train(
    settings: TrainSettings,
    callbacks: Sequence[StepCallback] = (),
    epoch_callbacks: Sequence[EpochCallback] = (),
    test: bool = True,
) -> Dict[str, Any]:
    """Run ``settings`` on this rank (alone, or as one rank of a launched job); ``callbacks``
    are called after every training step, ``epoch_callbacks`` after every validation; with
    ``test=False`` the test split is never read."""
    env = DistEnv.from_environment(settings.device)
    run = None
    try:
        run = build_run(settings, env)
        return Trainer(run, callbacks, epoch_callbacks).fit(test)
    finally:
        if run is not None:
            run.close()  # the run folder's lock
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
