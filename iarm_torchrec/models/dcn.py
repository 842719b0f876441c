"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017), on the shared field embedding."""

import dataclasses
from typing import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import DeepModelConfig
from iarm_torchrec.models.field_model import FieldModel, FieldOptions
from iarm_torchrec.modules.cross import cross_net
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES
from iarm_torchrec.modules.output import OutputArch
from iarm_torchrec.modules.tower import Tower

class DCN(FieldModel):
    """Cross network and deep network side by side over ``x_0 = [v_1; ...; v_M]``::

        x_{l+1} = x_0 x_l^T w_l + b_l + x_l        cross layer (paper Eq. 3)    B x MD
        h       = MLP(x_0)                          deep network                 B x H
        y       = w^T [x_L; h] + b                  combination layer (Eq. 5)    B

    ``x_0`` is the flattened ``B x M x D`` field matrix (numerical fields as ``v_m x_m``, in
    the same space as the categorical ones). The cross network
    (:func:`~iarm_torchrec.modules.cross.cross_net`) is TorchRec's ``VectorCrossNet`` (the
    original DCN, ``cross_type="vector"``) or its ``CrossNet`` (DCN-V2's
    ``x_0 * (W_l x_l + b_l) + x_l`` with a full matrix, ``cross_type="matrix"``).

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> DCN(ebc, dense_in_features=2, deep_layer_sizes=[16])(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        deep_layer_sizes: the deep network's ReLU layers.
        dropout / norm: the deep tower's regularizers (:class:`~iarm_torchrec.modules.tower.Tower`).
        num_cross_layers: ``L``, the number of cross layers.
        cross_type: ``"vector"`` (DCN) or ``"matrix"`` (DCN-V2).
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        deep_layer_sizes: Sequence[int] = tuple(DEFAULT_DEEP_LAYER_SIZES),
        dropout: float = 0.0,
        norm: str = "none",
        num_cross_layers: int = 3,
        cross_type: str = "vector",
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, **fields)
        num_inputs = self.flat_dim
        self.cross_net: nn.Module = cross_net(num_inputs, num_cross_layers, cross_type)
        self.deep_net: Tower = Tower(num_inputs, deep_layer_sizes, dropout, norm, name="deep_layer_sizes")
        self.output_arch: OutputArch = OutputArch(num_inputs + self.deep_net.output_dim)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        x0 = self.embedding_arch(dense_features, sparse_features).flatten(1)  # B x MD
        return self.output_arch(torch.cat([self.cross_net(x0), self.deep_net(x0)], dim=1))


@dataclasses.dataclass
class DCNConfig(DeepModelConfig):
    """Settings of :class:`DCN`: deep layer sizes, number and kind of cross layers."""

    model_class = DCN

    num_cross_layers: int = 3
    cross_type: str = "vector"

