"""FM: Factorization Machines (Rendle, ICDM 2010), on the shared field embedding."""

import dataclasses
from typing import Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from iarm_torchrec.models.config import ModelConfig
from iarm_torchrec.modules.factorization import BiInteraction
from iarm_torchrec.modules.field_embedding import FieldEmbeddingArch
from iarm_torchrec.modules.linear import FirstOrderArch


class FM(nn.Module):
    """``y = w_0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j>`` over the ``M`` fields.

    ``v_i`` are the ``B x M x D`` field vectors of :class:`FieldEmbeddingArch` (a numerical
    field's vector is ``v_m x_m``, so its pairs carry ``x_m`` as in FM); the first-order part
    is :class:`FirstOrderArch`; the second-order sum is computed as
    ``0.5 * sum_d ((sum_i v_i)^2 - sum_i v_i^2)`` (:class:`BiInteraction`).

    Args:
        embedding_bag_collection: one ``D``-dim table per categorical field.
        dense_in_features: ``N``, the number of numerical fields.
        dense_feature_names: their names (default ``dense_i``).
        multi_hot_feature_names: multi-valued fields (tables pooled by ``MEAN``).
        linear_embedding_bag_collection: the first-order weight tables (``embedding_dim=1``);
            by default one per table of ``embedding_bag_collection``, on its device.

    Example::

        >>> from torchrec import EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name=f"t_{f}", embedding_dim=8, num_embeddings=10, feature_names=[f])
        ...     for f in ["user", "item"]])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
        >>> FM(ebc, dense_in_features=2)(torch.rand(2, 2), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_feature_names: Sequence[str] = (),
        multi_hot_feature_names: Sequence[str] = (),
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
    ) -> None:
        super().__init__()
        self.embedding_arch: FieldEmbeddingArch = FieldEmbeddingArch(
            embedding_bag_collection, dense_in_features, dense_feature_names, multi_hot_feature_names
        )
        self.first_order_arch: FirstOrderArch = FirstOrderArch.for_fields(
            embedding_bag_collection, dense_in_features, linear_embedding_bag_collection
        )
        self.interaction: BiInteraction = BiInteraction()

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        second_order = self.interaction(fields).sum(dim=1)  # B
        return self.first_order_arch(dense_features, sparse_features) + second_order


@dataclasses.dataclass
class FMConfig(ModelConfig):
    """FM has no settings beyond its fields."""

    model_class = FM
