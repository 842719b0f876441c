"""Wide & Deep (Cheng et al., DLRS 2016), on the shared field embedding."""

import dataclasses
from typing import Optional, Sequence

import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import DeepModelConfig
from iarm_torchrec.models.field_model import FieldOptions, FirstOrderModel
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES, DeepArch


class WideAndDeep(FirstOrderModel):
    """``y = wide(x) + deep(x)``, trained jointly.

    * wide: a linear model over the raw features, ``w_0 + sum_i w_i x_i`` (:class:`FirstOrderArch`).
      The original also feeds hand-made cross-product transformations to the wide part; with no
      such feature engineering in the paper's comparison, the wide part is the linear model.
    * deep: an MLP over the concatenated ``B x MD`` field embeddings (:class:`DeepArch`).

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> WideAndDeep(ebc, dense_in_features=2, deep_layer_sizes=[16])(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        deep_layer_sizes: the deep MLP's ReLU layers.
        dropout / norm: the deep tower's regularizers (:class:`~iarm_torchrec.modules.tower.Tower`).
        linear_embedding_bag_collection: the wide weight tables (``embedding_dim=1``);
            by default one per table of ``embedding_bag_collection``, on its device.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        deep_layer_sizes: Sequence[int] = tuple(DEFAULT_DEEP_LAYER_SIZES),
        dropout: float = 0.0,
        norm: str = "none",
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, linear_embedding_bag_collection, **fields)
        num_inputs = self.flat_dim
        self.deep_arch: DeepArch = DeepArch(num_inputs, deep_layer_sizes, dropout, norm)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        return self.first_order_arch(dense_features, sparse_features) + self.deep_arch(fields)


@dataclasses.dataclass
class WideAndDeepConfig(DeepModelConfig):
    """Settings of :class:`WideAndDeep`: the deep MLP's layer sizes."""

    model_class = WideAndDeep
