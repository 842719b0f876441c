"""Second-order field interactions shared by FM, DeepFM, NFM, AFM and PNN.

TorchRec's ``torchrec.modules.deepfm.FactorizationMachine`` flattens its input to ``B x MD``
and pairs every *scalar* with every other, including the coordinates of one field with each
other; FM pairs field *vectors* (``<v_i, v_j>``, ``i < j``), so the interactions live here.
"""

import torch
from torch import nn


class BiInteraction(nn.Module):
    """Bi-interaction pooling: ``sum_{i<j} v_i (*) v_j = 0.5 * ((sum_i v_i)^2 - sum_i v_i^2)``.

    This ``D``-vector is NFM's bi-interaction layer (He & Chua, SIGIR 2017, Eq. 4); the sum of
    its coordinates is FM's second-order term ``sum_{i<j} <v_i, v_j>`` (Rendle, ICDM 2010),
    computed in ``O(MD)``.

    Example::

        >>> BiInteraction()(torch.ones(2, 3, 4))  # three pairs of all-ones vectors
        tensor([[3., 3., 3., 3.],
                [3., 3., 3., 3.]])
    """

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x D`` field vectors -> ``B x D``."""
        square_of_sum = fields.sum(dim=1).square()
        sum_of_squares = fields.square().sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_squares)


class PairwiseProduct(nn.Module):
    """All element-wise products ``p_ij = v_i (*) v_j`` of field pairs ``i < j``.

    AFM attends over them (Xiao et al., IJCAI 2017, Eq. 3); their coordinate sums are IPNN's
    inner products ``<v_i, v_j>`` (Qu et al., ICDM 2016). Pairs are in row-major order
    ``(0,1), (0,2), ..., (M-2, M-1)``: ``P = M(M-1)/2`` of them.

    Args:
        num_fields: ``M``.

    Example::

        >>> PairwiseProduct(4)(torch.rand(2, 4, 3)).shape
        torch.Size([2, 6, 3])
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        left, right = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("left", left, persistent=False)
        self.register_buffer("right", right, persistent=False)
        self.num_pairs: int = left.numel()

    def forward(self, fields: torch.Tensor) -> torch.Tensor:
        """``B x M x D`` -> ``B x P x D``."""
        return fields.index_select(1, self.left) * fields.index_select(1, self.right)
