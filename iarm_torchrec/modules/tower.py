"""The fully connected towers of every model: ``Linear -> [norm] -> ReLU -> [dropout]`` per layer.

TorchRec's ``torchrec.modules.mlp.MLP`` is ``Linear -> activation`` only; the towers here also
take the regularizers practitioners tune (dropout, batch or layer normalization), so every deep
part (IARM's interest arch, the baselines' deep towers) is one :class:`Tower`.
"""

from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn

from iarm_torchrec.modules.checks import check_choice, check_layer_sizes

NORMS = ("none", "batch", "layer")
"""Normalization after each layer's linear map: none, ``BatchNorm1d`` or ``LayerNorm``."""


def check_dropout(name: str, rate: float) -> None:
    """Raise unless ``rate`` is a dropout probability in ``[0, 1)``."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {rate}")


class Tower(nn.Module):
    """``layer_sizes`` fully connected ReLU layers over a ``B x in_features`` input.

    Args:
        in_features: input width.
        layer_sizes: output width of each layer (at least one).
        dropout: dropout probability after each layer's ReLU (0: none).
        norm: ``"none"``, ``"batch"`` (``BatchNorm1d``) or ``"layer"`` (``LayerNorm``), applied
            between each linear map and its ReLU.
        name: the setting's name in error messages (e.g. ``deep_layer_sizes``).

    Example::

        >>> tower = Tower(12, [8, 4], dropout=0.1, norm="batch")
        >>> tower(torch.rand(5, 12)).shape, tower.output_dim
        (torch.Size([5, 4]), 4)
    """

    def __init__(
        self,
        in_features: int,
        layer_sizes: Sequence[int],
        dropout: float = 0.0,
        norm: str = "none",
        name: str = "layer_sizes",
    ) -> None:
        super().__init__()
        check_layer_sizes(name, layer_sizes)
        check_dropout("dropout", dropout)
        check_choice("norm", norm, NORMS)
        layers: List[nn.Module] = []
        for size in layer_sizes:  # named parts: the same state-dict keys with and without dropout
            parts: "OrderedDict[str, nn.Module]" = OrderedDict(linear=nn.Linear(in_features, size))
            if norm != "none":
                parts["norm"] = nn.BatchNorm1d(size) if norm == "batch" else nn.LayerNorm(size)
            parts["relu"] = nn.ReLU()
            if dropout > 0:
                parts["dropout"] = nn.Dropout(dropout)
            layers.append(nn.Sequential(parts))
            in_features = size
        self.layers: nn.Sequential = nn.Sequential(*layers)
        self.output_dim: int = layer_sizes[-1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``B x in_features`` -> ``B x output_dim``."""
        return self.layers(features)
