"""Deep Crossing (Shan et al., KDD 2016), on the shared field embedding."""

import dataclasses
from typing import List, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import ModelConfig
from iarm_torchrec.models.field_model import FieldModel, FieldOptions
from iarm_torchrec.modules.checks import check_layer_sizes
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES
from iarm_torchrec.modules.output import OutputArch


class ResidualUnit(nn.Module):
    """``x + ReLU(W_2 ReLU(W_1 x + b_1) + b_2)``: Deep Crossing's residual unit (paper Eq. 1),
    two ReLU layers ``K -> hidden -> K`` added back onto their input.

    Args:
        in_features: ``K``, kept by the unit.
        hidden_features: the inner layer's size.

    Example::

        >>> ResidualUnit(6, 4)(torch.rand(2, 6)).shape
        torch.Size([2, 6])
    """

    def __init__(self, in_features: int, hidden_features: int) -> None:
        super().__init__()
        self.inner: nn.Linear = nn.Linear(in_features, hidden_features)  # W_1, b_1
        self.outer: nn.Linear = nn.Linear(hidden_features, in_features)  # W_2, b_2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``B x K`` -> ``B x K``."""
        return features + torch.relu(self.outer(torch.relu(self.inner(features))))


class DeepCrossing(FieldModel):
    """Stacked residual units over the concatenated fields ``[v_1; ...; v_M]``, then a linear
    scoring layer: ``y = w^T R_L(...R_1([v_1; ...; v_M])) + b``.

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> DeepCrossing(ebc, dense_in_features=2, residual_hidden_sizes=[16, 8])(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        residual_hidden_sizes: one :class:`ResidualUnit` per entry, its inner layer's size.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        residual_hidden_sizes: Sequence[int] = tuple(DEFAULT_DEEP_LAYER_SIZES),
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, **fields)
        check_layer_sizes("residual_hidden_sizes", residual_hidden_sizes)
        num_inputs = self.flat_dim
        self.residual_units: nn.Sequential = nn.Sequential(
            *(ResidualUnit(num_inputs, hidden) for hidden in residual_hidden_sizes)
        )
        self.output_arch: OutputArch = OutputArch(num_inputs)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        stacked = self.embedding_arch(dense_features, sparse_features).flatten(1)  # B x MD
        return self.output_arch(self.residual_units(stacked))


@dataclasses.dataclass
class DeepCrossingConfig(ModelConfig):
    """Settings of :class:`DeepCrossing`: the residual units' inner sizes."""

    model_class = DeepCrossing

    residual_hidden_sizes: List[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_DEEP_LAYER_SIZES))

