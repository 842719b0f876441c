"""User-interest arch (paper Eq. 5-6)."""

from typing import Sequence

import torch
from torch import nn
from iarm_torchrec.modules.tower import Tower


class InterestArch(nn.Module):
    """The user's interest expression ``U`` from the embeddings of the user fields.

    Eq. 5 stacks the user fields' embeddings into ``u = [u_1; ...; u_n]`` (``B x n x D``,
    flattened to ``B x nD``); Eq. 6 passes it through four fully connected layers, each
    followed by ReLU: ``Z_1 = f(W_1 u + b_1) ... U = f(W_4 Z_3 + b_4)``.

    Args:
        in_features: ``n * D``.
        layer_sizes: output size of each ReLU layer (the paper uses four).
        dropout / norm: the tower's regularizers (not in the paper; off by default).

    Example::

        >>> arch = InterestArch(in_features=8, layer_sizes=[16, 16, 8, 4])
        >>> arch(torch.rand(3, 2, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0, norm: str = "none") -> None:
        super().__init__()
        self.mlp: Tower = Tower(in_features, layer_sizes, dropout, norm, name="interest_layer_sizes")
        self.output_dim: int = self.mlp.output_dim

    def forward(self, user_embeddings: torch.Tensor) -> torch.Tensor:
        """
        Args:
            user_embeddings: ``B x n x D`` embeddings of the user fields.

        Returns:
            ``B x layer_sizes[-1]`` interest expression ``U``.
        """
        return self.mlp(user_embeddings.flatten(1))
