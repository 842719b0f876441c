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

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
        >>> from torchrec.datasets.utils import Batch
        >>> from iarm_torchrec.models.iarm import IARM
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name="t_u", embedding_dim=4, num_embeddings=10, feature_names=["u"])])
        >>> train = CTRTrain(IARM(ebc, dense_in_features=1, user_feature_names=["u"]))
        >>> batch = Batch(dense_features=torch.rand(2, 1), labels=torch.tensor([0.0, 1.0]),
        ...     sparse_features=KeyedJaggedTensor.from_lengths_sync(
        ...         keys=["u"], values=torch.tensor([3, 7]), lengths=torch.tensor([1, 1])))
        >>> loss, (_, logits, labels) = train(batch)
        >>> loss.requires_grad, logits.shape
        (True, torch.Size([2]))
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
