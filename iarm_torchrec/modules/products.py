"""PNN's product signals over field vectors (Qu et al., ICDM 2016): inner and outer products.

PNN feeds them to its deep tower; IARM's product variant joins them with its own outputs.
"""

import torch
from torch import nn

from iarm_torchrec.modules.checks import check_choice
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


def product_arch(kind: str, num_fields: int, embedding_dim: int) -> nn.Module:
    """The ``B x M x D -> B x output_dim`` product arch of ``kind``: ``"inner"`` or ``"outer"``.

    Example::

        >>> product_arch("outer", num_fields=4, embedding_dim=3).output_dim
        9
    """
    check_choice("product", kind, PRODUCTS)
    return InnerProductArch(num_fields) if kind == "inner" else OuterProductArch(embedding_dim)
