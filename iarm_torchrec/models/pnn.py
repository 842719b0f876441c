"""PNN: Product-based Neural Networks (Qu et al., ICDM 2016), on the shared field embedding."""

import dataclasses
from typing import Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import DeepModelConfig
from iarm_torchrec.models.field_model import FieldModel, FieldOptions
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES, DeepArch
from iarm_torchrec.modules.products import product_arch

class PNN(FieldModel):
    """``y = MLP([z; p])``: the linear signal ``z = [v_1; ...; v_M]`` and a product signal ``p``.

    The paper's product layer ``l_1 = ReLU(W_z (.) z + W_p (.) p + b_1)`` is a linear map of the
    concatenation ``[z; p]`` followed by ReLU, i.e. the first layer of :class:`DeepArch` over it;
    the further hidden layers and the output follow. ``product`` picks ``p``:
    ``"inner"`` (IPNN) or ``"outer"`` (OPNN), :mod:`iarm_torchrec.modules.products`.

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> PNN(ebc, dense_in_features=2, deep_layer_sizes=[16], product="outer")(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        deep_layer_sizes: the ReLU layers, the first being the product layer ``l_1``.
        dropout / norm: the deep tower's regularizers (:class:`~iarm_torchrec.modules.tower.Tower`).
        product: ``"inner"`` or ``"outer"``.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        deep_layer_sizes: Sequence[int] = tuple(DEFAULT_DEEP_LAYER_SIZES),
        dropout: float = 0.0,
        norm: str = "none",
        product: str = "inner",
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, **fields)
        self.product_arch: nn.Module = product_arch(product, self.num_fields, self.embedding_dim)
        self.deep_arch: DeepArch = DeepArch(self.flat_dim + self.product_arch.output_dim, deep_layer_sizes, dropout, norm)

    def logit_bias(self) -> torch.Tensor:
        """The deep tower's output bias."""
        return self.deep_arch.output_arch.linear.bias

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        return self.deep_arch(torch.cat([fields.flatten(1), self.product_arch(fields)], dim=1))


@dataclasses.dataclass
class PNNConfig(DeepModelConfig):
    """Settings of :class:`PNN`: layer sizes and the product, ``"inner"`` (IPNN) or ``"outer"`` (OPNN)."""

    model_class = PNN

    product: str = "inner"

