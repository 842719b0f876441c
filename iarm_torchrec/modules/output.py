"""Output layer (paper Eq. 12)."""

import torch
from torch import nn


class OutputArch(nn.Module):
    """``w^T z + b``: the logit of Eq. 12, before the sigmoid (which lives in the loss).

    Args:
        in_features: size of the concatenated representation ``z``.

    Example::

        >>> OutputArch(6)(torch.rand(2, 6)).shape
        torch.Size([2])
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear: nn.Linear = nn.Linear(in_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``B x K`` -> ``B`` logits."""
        return self.linear(features).squeeze(-1)
