"""FM: Factorization Machines (Rendle, ICDM 2010), on the shared field embedding."""

import dataclasses
from typing import Optional

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import FactorizationConfig
from iarm_torchrec.models.field_model import FACTOR_INIT_SCALE, FieldOptions, FirstOrderModel
from iarm_torchrec.modules.factorization import BiInteraction


class FM(FirstOrderModel):
    """``y = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j>`` over the ``M`` fields.

    ``v_i`` are the ``B x M x D`` field vectors of :class:`FieldEmbeddingArch` (a numerical
    field's vector is ``v_m x_m``, so its pairs carry ``x_m`` as in FM); the first-order part
    is :class:`FirstOrderArch`; the second-order sum is computed as
    ``0.5 * sum_d ((sum_i v_i)^2 - sum_i v_i^2)`` (:class:`BiInteraction`).

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> FM(ebc, dense_in_features=2)(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        linear_embedding_bag_collection / factor_init_scale: the first-order tables and where the
            factor vectors start (:class:`FirstOrderModel`).
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        factor_init_scale: float = FACTOR_INIT_SCALE,
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(
            embedding_bag_collection, dense_in_features, linear_embedding_bag_collection, factor_init_scale, **fields
        )
        self.interaction: BiInteraction = BiInteraction()

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        second_order = self.interaction(fields).sum(dim=1)  # B
        return self.first_order_arch(dense_features, sparse_features) + second_order


@dataclasses.dataclass
class FMConfig(FactorizationConfig):
    """FM has no settings beyond its fields."""

    model_class = FM
