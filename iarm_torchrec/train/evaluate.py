"""AUC and log loss over every rank's samples of a split.

Each rank runs its slice of the split through the sharded model (by the same
``TrainPipelineSparseDist`` as training, in eval mode); the logits and labels of all ranks
are gathered, the loader's padding rows (label ``PADDING_LABEL``) dropped, and the metrics
computed once over the whole split, so they do not depend on the number of ranks.
"""

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import binary_auroc
from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

from iarm_torchrec.data.loader import PADDING_LABEL
from iarm_torchrec.train.distributed import DistEnv


@dataclass
class EvalResult:
    """Metrics of one split: ``auc`` (ROC AUC), ``logloss`` (mean binary cross-entropy, Eq. 13)
    and ``rows`` (real samples, padding excluded)."""

    auc: float
    logloss: float
    rows: int


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> EvalResult:
    """AUC and log loss of ``logits`` (``n``) against 0/1 ``labels`` (``n``), in float64.

    Example::

        >>> r = binary_metrics(torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
        >>> r.auc, round(r.logloss, 4), r.rows
        (1.0, 0.3657, 4)
    """
    logits = logits.double()
    labels = labels.double()
    auc = float(binary_auroc(torch.sigmoid(logits), labels.long()))
    logloss = float(F.binary_cross_entropy_with_logits(logits, labels))
    return EvalResult(auc, logloss, int(labels.numel()))


def gather_scores(
    pipeline: TrainPipelineSparseDist, model: nn.Module, batches: Iterable[object], env: DistEnv
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Every rank's ``(logits, labels)`` over ``batches`` run by ``pipeline`` (which drives
    ``model``), padding dropped, on every rank. Collective: each rank must run the same
    number of batches (the eval loader ensures it)."""
    was_training = model.training
    model.eval()
    logits: List[torch.Tensor] = []
    labels: List[torch.Tensor] = []
    iterator: Iterator[object] = iter(batches)
    with torch.no_grad():
        while True:
            try:
                _, batch_logits, batch_labels = pipeline.progress(iterator)
            except StopIteration:
                break
            logits.append(batch_logits.float().cpu())
            labels.append(batch_labels.float().cpu())
    model.train(was_training)
    all_logits = env.gather_all(torch.cat(logits) if logits else torch.zeros(0))
    all_labels = env.gather_all(torch.cat(labels) if labels else torch.zeros(0))
    real = all_labels != PADDING_LABEL
    return all_logits[real], all_labels[real]


def evaluate(
    pipeline: TrainPipelineSparseDist, model: nn.Module, batches: Iterable[object], env: DistEnv
) -> EvalResult:
    """AUC and log loss of ``model`` (driven by ``pipeline``) over all ranks' ``batches``."""
    return binary_metrics(*gather_scores(pipeline, model, batches, env))
