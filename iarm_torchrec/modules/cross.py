"""Explicit feature crosses over the flattened field vectors: DCN's and DCN-V2's cross network.

DCN is built on it; IARM's cross variant joins its output before the output layer. The layers
themselves are TorchRec's (``torchrec.modules.crossnet``).
"""

from torch import nn
from torchrec.modules.crossnet import CrossNet, VectorCrossNet

from iarm_torchrec.modules.checks import check_choice, check_non_negative

CROSS_TYPES = ("vector", "matrix")


def cross_net(in_features: int, num_layers: int, cross_type: str = "vector") -> nn.Module:
    """``L`` cross layers over ``x_0`` (``B x N`` -> ``B x N``, the width kept)::

        x_{l+1} = x_0 x_l^T w_l + b_l + x_l          cross_type="vector" (DCN, Eq. 3)
        x_{l+1} = x_0 * (W_l x_l + b_l) + x_l        cross_type="matrix" (DCN-V2)

    Each layer adds one degree of explicit product between the input's entries, which attention
    with a linear output (IARM's Eq. 12) cannot form.

    Args:
        in_features: ``N``, the flattened field vectors' width (``M x D``).
        num_layers: ``L``.
        cross_type: ``"vector"`` (TorchRec's ``VectorCrossNet``) or ``"matrix"`` (its ``CrossNet``).

    Example::

        >>> import torch
        >>> cross_net(6, num_layers=2, cross_type="matrix")(torch.rand(3, 6)).shape
        torch.Size([3, 6])
    """
    check_choice("cross_type", cross_type, CROSS_TYPES)
    check_non_negative(num_cross_layers=num_layers)
    return (VectorCrossNet if cross_type == "vector" else CrossNet)(in_features, num_layers)
