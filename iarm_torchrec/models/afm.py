"""AFM: Attentional Factorization Machines (Xiao et al., IJCAI 2017), on the shared field embedding."""

import dataclasses
from typing import Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import FactorizationConfig
from iarm_torchrec.models.field_model import FACTOR_INIT_SCALE, FieldOptions, FirstOrderModel
from iarm_torchrec.modules.checks import check_positive
from iarm_torchrec.modules.factorization import PairwiseProduct


class AttentionalPoolingArch(nn.Module):
    """AFM's attention-based pooling of the pairwise interactions (paper Eq. 4-5)::

        p_ij  = v_i (*) v_j                                   B x P x D
        a'_ij = h^T ReLU(W p_ij + b)                          B x P
        a_ij  = softmax over the pairs of a'_ij
        y_2   = p^T sum_{i<j} a_ij p_ij                       B

    Args:
        num_fields: ``M``.
        embedding_dim: ``D``.
        attention_dim: ``t``, the attention network's hidden size.

    Example::

        >>> AttentionalPoolingArch(num_fields=4, embedding_dim=3, attention_dim=5)(torch.rand(2, 4, 3)).shape
        torch.Size([2])
    """

    def __init__(self, num_fields: int, embedding_dim: int, attention_dim: int) -> None:
        super().__init__()
        check_positive(attention_dim=attention_dim)
        self.pairwise: PairwiseProduct = PairwiseProduct(num_fields)
        self.attention: nn.Linear = nn.Linear(embedding_dim, attention_dim)  # W, b
        self.attention_score: nn.Linear = nn.Linear(attention_dim, 1, bias=False)  # h
        self.projection: nn.Linear = nn.Linear(embedding_dim, 1, bias=False)  # p

    def attention_weights(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x D`` -> the ``B x P`` weights ``a_ij``, pairs in :class:`PairwiseProduct` order."""
        return self._pairs_and_weights(fields)[1]

    def _pairs_and_weights(self, fields: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pairs = self.pairwise(fields)  # B x P x D
        scores = self.attention_score(torch.relu(self.attention(pairs))).squeeze(-1)  # B x P
        return pairs, torch.softmax(scores, dim=1)

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x D`` -> ``B`` second-order logits."""
        pairs, weights = self._pairs_and_weights(fields)
        pooled = (weights.unsqueeze(-1) * pairs).sum(dim=1)  # B x D
        return self.projection(pooled).squeeze(-1)


class AFM(FirstOrderModel):
    """``y = w_0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i (*) v_j)`` (paper Eq. 5).

    The first-order part is :class:`FirstOrderArch`; the second-order part is
    :class:`AttentionalPoolingArch` over the ``B x M x D`` field vectors.

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> AFM(ebc, dense_in_features=2, attention_dim=4)(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        attention_dim: ``t``, the attention network's hidden size.
        linear_embedding_bag_collection / factor_init_scale: the first-order tables and where the
            factor vectors start (:class:`FirstOrderModel`).
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        attention_dim: int = 16,
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        factor_init_scale: float = FACTOR_INIT_SCALE,
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(
            embedding_bag_collection, dense_in_features, linear_embedding_bag_collection, factor_init_scale, **fields
        )
        self.attention_arch: AttentionalPoolingArch = AttentionalPoolingArch(
            self.num_fields, self.embedding_dim, attention_dim
        )

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        return self.first_order_arch(dense_features, sparse_features) + self.attention_arch(fields)


@dataclasses.dataclass
class AFMConfig(FactorizationConfig):
    """Settings of :class:`AFM`: the attention network's hidden size ``t``."""

    model_class = AFM

    attention_dim: int = 16

