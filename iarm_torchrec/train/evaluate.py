"""AUC, log loss, normalized entropy and calibration over every rank's samples of a split.

Each rank runs its slice of the split through the sharded model (by the same
``TrainPipelineSparseDist`` as training, in eval mode); the logits and labels of all ranks
are gathered, the loader's padding rows (label ``PADDING_LABEL``) dropped, and the metrics
computed once over the whole split, so they do not depend on the number of ranks. Normalized
entropy and calibration are TorchRec's own definitions (``torchrec.metrics.ne`` and
``torchrec.metrics.calibration``), applied to the gathered split rather than to TorchRec's
windowed ``RecMetricModule``, so that every figure of a run describes the same samples.
"""

from dataclasses import dataclass
from typing import Iterable, Iterator, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist
from torchrec.metrics.calibration import (
    CALIBRATION_DENOM,
    CALIBRATION_NUM,
    compute_calibration,
    get_calibration_states,
)
from torchrec.metrics.ne import compute_ne, get_ne_states

from iarm_torchrec.allocator import ResultBuffer
from iarm_torchrec.data.loader import PADDING_LABEL
from iarm_torchrec.train.distributed import DistEnv


_ETA = 1e-12
"""TorchRec's clamp of probabilities away from 0 and 1 in its NE."""


@dataclass
class EvalResult:
    """Metrics of one split:

    * ``auc``: ROC AUC;
    * ``logloss``: mean binary cross-entropy (Eq. 13);
    * ``ne``: normalized entropy, the log loss over that of always predicting the split's click
      rate (below 1: better than the click rate alone);
    * ``calibration``: mean predicted click probability over the observed click rate (1: calibrated);
    * ``click_rate``: the observed click rate;
    * ``rows``: real samples, padding excluded.
    """

    auc: float
    logloss: float
    ne: float
    calibration: float
    click_rate: float
    rows: int


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """AUC and log loss of ``logits`` (``n``) against 0/1 ``labels`` (``n``), in float64.

    Example::

        >>> r = binary_metrics(torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
        >>> r.auc, round(r.logloss, 4), round(r.ne, 4), round(r.calibration, 4), r.click_rate, r.rows
        (1.0, 0.3657, 0.6503, 1.8196, 0.25, 4)
    """
    logits = logits.double()
    labels = labels.double()
    probabilities = torch.sigmoid(logits)
    auc = float(binary_auroc(probabilities, labels.long()))
    logloss = float(F.binary_cross_entropy_with_logits(logits, labels))
    weights = torch.ones_like(labels)
    s = get_ne_states(labels, probabilities, weights, _ETA)
    ne = float(compute_ne(s["cross_entropy_sum"], s["weighted_num_samples"], s["pos_labels"], s["neg_labels"], _ETA))
    calibration_states = get_calibration_states(labels, probabilities, weights)
    calibration = float(compute_calibration(calibration_states[CALIBRATION_NUM], calibration_states[CALIBRATION_DENOM]))
    click_rate = float(labels.mean()) if labels.numel() else float("nan")
    return EvalResult(auc, logloss, ne, calibration, click_rate, int(labels.numel()))


def gather_scores(
    pipeline: TrainPipelineSparseDist, model: nn.Module, batches: Iterable[object], env: DistEnv
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``(logits, labels)`` over ``batches`` run by ``pipeline`` (which drives
    ``model``), padding dropped, on every rank. Collective: each rank must run the same
    number of batches (the eval loader ensures it)."""
    was_training = model.training
    model.eval()
    logits, labels = ResultBuffer(), ResultBuffer()  # not lists of small tensors: allocator.py
    iterator: Iterator[object] = iter(batches)
    with torch.no_grad():
        while True:
            try:
                _, batch_logits, batch_labels = pipeline.progress(iterator)
            except StopIteration:
                break
            logits.extend(batch_logits)  # the buffer takes float32 on the CPU
            labels.extend(batch_labels)
    model.train(was_training)
    all_logits = env.gather_all(logits.values())
    all_labels = env.gather_all(labels.values())
    real = all_labels != PADDING_LABEL
    return all_logits[real], all_labels[real]


def evaluate(
    pipeline: TrainPipelineSparseDist, model: nn.Module, batches: Iterable[object], env: DistEnv
) -> EvalResult:
    """AUC and log loss of ``model`` (driven by ``pipeline``) over all ranks' ``batches``."""
    return binary_metrics(*gather_scores(pipeline, model, batches, env))
