"""The training wrapper shared by every CTR model: log loss (paper Eq. 13)."""

from typing import Tuple

import torch
from torch import nn
from torchrec.datasets.utils import Batch


class CTRTrain(nn.Module):
    """Wraps any ``forward(dense_features, sparse_features) -> B logits`` model for training.

    The loss is Eq. 13's log loss on ``sigmoid(logit)``, computed stably from logits by
    ``BCEWithLogitsLoss``. The outputs follow ``torchrec.models.dlrm.DLRMTrain`` so that
    TorchRec's train pipelines can drive it.

    Args:
        model: a CTR model returning ``B`` logits.

    Example::

        >>> from iarm_torchrec import IARM  # doctest: +SKIP
        >>> loss, (loss_d, logits, labels) = CTRTrain(model)(batch)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model: nn.Module = model
        self.loss_fn: nn.Module = nn.BCEWithLogitsLoss()

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """
        Args:
            batch: ``dense_features`` ``B x N``, ``sparse_features`` KJT, ``labels`` ``B``.

        Returns:
            ``(loss, (loss, logits, labels))``, the inner three detached.
        """
        logits = self.model(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(logits, batch.labels.float())
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
