"""NFM: Neural Factorization Machines (He & Chua, SIGIR 2017), on the shared field embedding."""

import dataclasses
from typing import Optional, Sequence

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import DeepModelConfig, FactorizationConfig
from iarm_torchrec.models.field_model import FACTOR_INIT_SCALE, FieldOptions, FirstOrderModel
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES, DeepArch
from iarm_torchrec.modules.factorization import BiInteraction


class NFM(FirstOrderModel):
    """``y = w_0 + sum_i w_i x_i + h^T MLP(f_BI)``, ``f_BI = sum_{i<j} v_i (*) v_j`` (paper Eq. 2-7).

    The bi-interaction pooling (:class:`BiInteraction`) turns the ``B x M x D`` field vectors
    into one ``B x D`` vector; :class:`DeepArch` stacks the hidden layers and the prediction
    weights ``h``. The paper's dropout and batch normalisation are left out, as everywhere here.

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> NFM(ebc, dense_in_features=2, deep_layer_sizes=[16])(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        deep_layer_sizes: the hidden ReLU layers above the bi-interaction pooling.
        dropout / norm: the deep tower's regularizers (:class:`~iarm_torchrec.modules.tower.Tower`).
        linear_embedding_bag_collection / factor_init_scale: the first-order tables and where the
            factor vectors start (:class:`FirstOrderModel`).
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        deep_layer_sizes: Sequence[int] = tuple(DEFAULT_DEEP_LAYER_SIZES),
        dropout: float = 0.0,
        norm: str = "none",
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        factor_init_scale: float = FACTOR_INIT_SCALE,
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(
            embedding_bag_collection, dense_in_features, linear_embedding_bag_collection, factor_init_scale, **fields
        )
        self.interaction: BiInteraction = BiInteraction()
        self.deep_arch: DeepArch = DeepArch(self.embedding_dim, deep_layer_sizes, dropout, norm)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        pooled = self.interaction(fields)  # B x D (Eq. 4)
        return self.first_order_arch(dense_features, sparse_features) + self.deep_arch(pooled)


@dataclasses.dataclass
class NFMConfig(DeepModelConfig, FactorizationConfig):
    """Settings of :class:`NFM`: the hidden layers above the bi-interaction pooling."""

    model_class = NFM
