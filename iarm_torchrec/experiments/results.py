"""Finished runs' metrics, summarised per study row as mean and standard deviation over seeds.

A run is finished when its folder holds ``metrics.json`` (written by the trainer, last,
atomically) with the test split's ``test_auc`` and ``test_logloss``. The test figures are
reported, never used to choose anything: the trainer keeps the epoch with the best
*validation* AUC.

Example::

    >>> s = Summary.of("IARM", None, [0, 1, 2], [0.80, 0.82, 0.81], [0.40, 0.39, 0.41])
    >>> round(s.auc_mean, 4), round(s.auc_std, 4), s.n
    (0.81, 0.01, 3)
"""

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from iarm_torchrec.experiments.presets import RunSpec
from iarm_torchrec.train.layout import METRICS_FILE


def load_metrics(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's ``metrics.json``, or ``None`` when the run has not finished."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: line {error.lineno}: not valid JSON ({error.msg}); delete it to rerun the run") from None
    missing = [k for k in ("test_auc", "test_logloss") if k not in metrics]
    if missing:
        raise ValueError(f"{path}: missing {missing}; delete it to rerun the run")
    return metrics


@dataclass(frozen=True)
class Summary:
    """One study row over its finished seeds.

    ``*_std`` is the sample standard deviation (``n - 1`` in the denominator), ``nan`` for
    one seed.
    """

    label: str
    group: Optional[str]
    seeds: List[int]
    auc_mean: float
    auc_std: float
    loss_mean: float
    loss_std: float

    @property
    def n(self) -> int:
        return len(self.seeds)

    @classmethod
    def of(
        cls, label: str, group: Optional[str], seeds: Sequence[int], aucs: Sequence[float], losses: Sequence[float]
    ) -> "Summary":
        return cls(label, group, list(seeds), statistics.fmean(aucs), _std(aucs), statistics.fmean(losses), _std(losses))


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(runs: Sequence[RunSpec]) -> List[Summary]:
    """One :class:`Summary` per ``(group, label)`` of ``runs`` with at least one finished seed,
    in the order the rows first appear."""
    rows: Dict[Any, List[Any]] = {}
    for run in runs:
        metrics = load_metrics(run.run_dir)
        if metrics is None:
            continue
        row = rows.setdefault((run.variant.group, run.variant.label), [[], [], []])
        row[0].append(run.seed)
        row[1].append(float(metrics["test_auc"]))
        row[2].append(float(metrics["test_logloss"]))
    return [Summary.of(label, group, *values) for (group, label), values in rows.items()]
