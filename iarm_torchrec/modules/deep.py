"""The deep tower of the DNN baselines: a ReLU MLP and a linear output to one logit."""

from typing import List, Sequence

import torch
from torch import nn
from iarm_torchrec.modules.output import OutputArch
from iarm_torchrec.modules.tower import Tower

DEFAULT_DEEP_LAYER_SIZES: List[int] = [400, 400, 400]
"""Three ReLU layers of 400 units: the default deep tower of every DNN baseline here (no
dropout or batch norm; tune per data set through the model configs)."""


class DeepArch(nn.Module):
    """``w^T MLP(flatten(x)) + b``: the deep part of Wide & Deep, DeepFM, NFM and PNN.

    A :class:`~iarm_torchrec.modules.tower.Tower` (Linear [+ norm] + ReLU [+ dropout] per layer)
    followed by :class:`OutputArch`.

    Args:
        in_features: size of the flattened input.
        layer_sizes: output size of each ReLU layer (at least one).
        dropout / norm: the tower's regularizers (:class:`~iarm_torchrec.modules.tower.Tower`).

    Example::

        >>> DeepArch(in_features=12, layer_sizes=[8, 4])(torch.rand(5, 3, 4)).shape
        torch.Size([5])
    """

    def __init__(self, in_features: int, layer_sizes: Sequence[int], dropout: float = 0.0, norm: str = "none") -> None:
        super().__init__()
        self.mlp: Tower = Tower(in_features, layer_sizes, dropout, norm, name="deep_layer_sizes")
        self.output_arch: OutputArch = OutputArch(self.mlp.output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``B x ...`` (flattened to ``B x in_features``) -> ``B`` logits."""
        return self.output_arch(self.mlp(features.flatten(1)))
