"""Arches shared by every model: field embedding, interest MLP, interacting layers, output."""

from iarm_torchrec.modules.field_embedding import FieldEmbeddingArch
from iarm_torchrec.modules.interacting import InteractingArch, InteractingLayer
from iarm_torchrec.modules.interest import InterestArch
from iarm_torchrec.modules.output import OutputArch

__all__ = [
    "FieldEmbeddingArch",
    "InteractingArch",
    "InteractingLayer",
    "InterestArch",
    "OutputArch",
]
