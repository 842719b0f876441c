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
from iarm_torchrec.modules.checks import check_choice
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES, DeepArch
from iarm_torchrec.modules.factorization import PairwiseProduct

PRODUCTS = ("inner", "outer")


class InnerProductArch(nn.Module):
    """IPNN's product signal: every pairwise inner product ``<v_i, v_j>``, ``i < j``.

    Args:
        num_fields: ``M``; the output has ``P = M(M-1)/2`` columns.

    Example::

        >>> InnerProductArch(4)(torch.rand(2, 4, 3)).shape
        torch.Size([2, 6])
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.pairwise: PairwiseProduct = PairwiseProduct(num_fields)
        self.output_dim: int = self.pairwise.num_pairs

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x D`` -> ``B x P``."""
        return self.pairwise(fields).sum(dim=-1)


class OuterProductArch(nn.Module):
    """OPNN's product signal with superposition: ``p = f_S f_S^T``, ``f_S = sum_i v_i``.

    The sum of all ``M^2`` outer products ``v_i v_j^T`` equals the outer product of the summed
    vectors, which costs ``O(D(M + D))`` instead of ``O(M^2 D^2)``.

    Args:
        embedding_dim: ``D``; the output has ``D^2`` columns.

    Example::

        >>> OuterProductArch(3)(torch.rand(2, 4, 3)).shape
        torch.Size([2, 9])
    """

    def __init__(self, embedding_dim: int) -> None:
        super().__init__()
        self.output_dim: int = embedding_dim * embedding_dim

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x D`` -> ``B x D^2``."""
        summed = fields.sum(dim=1)  # B x D
        return (summed.unsqueeze(2) * summed.unsqueeze(1)).flatten(1)


class PNN(FieldModel):
    """``y = MLP([z; p])``: the linear signal ``z = [v_1; ...; v_M]`` and a product signal ``p``.

    The paper's product layer ``l_1 = ReLU(W_z (.) z + W_p (.) p + b_1)`` is a linear map of the
    concatenation ``[z; p]`` followed by ReLU, i.e. the first layer of :class:`DeepArch` over it;
    the further hidden layers and the output follow. ``product`` picks ``p``:
    ``"inner"`` (IPNN, :class:`InnerProductArch`) or ``"outer"`` (OPNN, :class:`OuterProductArch`).

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> PNN(ebc, dense_in_features=2, deep_layer_sizes=[16], product="outer")(dense, kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        deep_layer_sizes: the ReLU layers, the first being the product layer ``l_1``.
        product: ``"inner"`` or ``"outer"``.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        deep_layer_sizes: Sequence[int] = tuple(DEFAULT_DEEP_LAYER_SIZES),
        product: str = "inner",
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, **fields)
        check_choice("product", product, PRODUCTS)
        num_fields, dim = self.num_fields, self.embedding_dim
        self.product_arch: nn.Module = InnerProductArch(num_fields) if product == "inner" else OuterProductArch(dim)
        self.deep_arch: DeepArch = DeepArch(num_fields * dim + self.product_arch.output_dim, deep_layer_sizes)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """``B x N`` dense values and the categorical KJT -> ``B`` logits."""
        fields = self.embedding_arch(dense_features, sparse_features)  # B x M x D
        return self.deep_arch(torch.cat([fields.flatten(1), self.product_arch(fields)], dim=1))


@dataclasses.dataclass
class PNNConfig(DeepModelConfig):
    """Settings of :class:`PNN`: layer sizes and the product, ``"inner"`` (IPNN) or ``"outer"`` (OPNN)."""

    model_class = PNN

    product: str = "inner"

