"""Run a study's training runs one after another, reusing every run that has finished.

A run is finished when its folder holds ``metrics.json``; such runs are skipped, so a study
that was interrupted resumes where it stopped when the command is repeated. A run that was
cut off mid-way continues from its newest checkpoint (``resume="latest"``). Runs that
several studies share (same settings, same seed: same folder) are trained once.

Each trained run also gets ``experiment.json`` beside its metrics: how long it took here. A
run that fails is logged with its error (kept in ``RUN/error.txt``) and the study goes on
with the next run; its row is missing from the report until a repeated command trains it.
"""

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from iarm_torchrec.experiments.presets import RunSpec
from iarm_torchrec.experiments.results import load_metrics
from iarm_torchrec.files import atomic_write_text
from iarm_torchrec.train.settings import TrainSettings

logger = logging.getLogger(__name__)

TrainFn = Callable[[TrainSettings], Dict[str, Any]]
"""Trains one run and writes ``settings.out/metrics.json`` (:func:`iarm_torchrec.train.trainer.train`)."""

TIMING_FILE = "experiment.json"
ERROR_FILE = "error.txt"


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run: ``trained`` now (in ``seconds``), ``reused`` or ``failed``
    (``error`` says why)."""

    run_dir: Path
    status: str
    seconds: float
    error: str = ""


def _default_train(settings: TrainSettings) -> Dict[str, Any]:
    from iarm_torchrec.train.trainer import train

    return train(settings)


def run_seconds(run_dir: Path) -> Optional[float]:
    """The wall time the run took when it was trained (``None`` if not recorded)."""
    path = Path(run_dir) / TIMING_FILE
    return float(json.loads(path.read_text())["wall_seconds"]) if path.is_file() else None


def run_all(runs: Sequence[RunSpec], train: Optional[TrainFn] = None) -> List[RunOutcome]:
    """Train every run of ``runs`` that has no ``metrics.json`` yet, in order.

    Args:
        runs: from :func:`~iarm_torchrec.experiments.presets.expand` (several presets may be
            concatenated; a folder listed twice is trained once).
        train: the training function (default: the trainer, in this process).

    Returns:
        One :class:`RunOutcome` per distinct run folder, in order.
    """
    train = train or _default_train
    outcomes: List[RunOutcome] = []
    distinct: Dict[Path, RunSpec] = {}
    for run in runs:
        distinct.setdefault(run.run_dir, run)
    for index, run in enumerate(distinct.values(), 1):
        name = f"[{index}/{len(distinct)}] {run.preset} {run.variant.label} seed {run.seed} ({run.run_dir})"
        if load_metrics(run.run_dir) is not None:
            logger.info("%s: finished before, reused", name)
            outcomes.append(RunOutcome(run.run_dir, "reused", 0.0))
            continue
        logger.info("%s: training", name)
        start = time.perf_counter()
        try:
            train(replace(run.settings, resume="latest"))
            if load_metrics(run.run_dir) is None:
                raise RuntimeError(f"{run.run_dir}: training returned without writing metrics.json")
        except Exception as error:  # one broken run must not stop a study of hours
            message = f"{type(error).__name__}: {error}"
            logger.exception("%s: failed", name)
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / ERROR_FILE).write_text(message + "\n")
            outcomes.append(RunOutcome(run.run_dir, "failed", time.perf_counter() - start, message))
            continue
        seconds = time.perf_counter() - start
        (run.run_dir / ERROR_FILE).unlink(missing_ok=True)
        _write_timing(run.run_dir, seconds)
        logger.info("%s: done in %.0f s", name, seconds)
        outcomes.append(RunOutcome(run.run_dir, "trained", seconds))
    return outcomes


def _write_timing(run_dir: Path, seconds: float) -> None:
    timing = {"wall_seconds": round(seconds, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(Path(run_dir) / TIMING_FILE, json.dumps(timing) + "\n")
