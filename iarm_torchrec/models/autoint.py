"""AutoInt (Song et al., CIKM 2019): IARM's interacting layers and output, without the interest arch."""

import dataclasses
from typing import List, Sequence

from torchrec.modules.embedding_modules import EmbeddingBagCollection
from typing_extensions import Unpack

from iarm_torchrec.models.config import ModelConfig
from iarm_torchrec.models.field_model import FieldOptions
from iarm_torchrec.models.iarm import IARM


class AutoInt(IARM):
    """``y = w^T [e_1^Res; ...; e_M^Res] + b`` over stacked interacting layers.

    AutoInt's interacting layer (multi-head self-attention with the plain inner product
    ``<W_Query e_m, W_Key e_k>``, concatenated heads, ``ReLU(e~_m + W_Res e_m)``) and its output
    layer are exactly IARM's Eq. 7-12 without the user interest ``U``: this is
    :class:`IARM` with ``use_interest=False`` (the paper's IARM*), under its original name, so
    it shares every arch and only fixes the switches.

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> model = AutoInt(ebc, dense_in_features=2, num_layers=2)
        >>> model(dense, kjt).shape, model.interest_arch is None
        (torch.Size([2]), True)

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        num_layers: interacting layers (AutoInt's default 3).
        num_heads: ``H`` (default 2).
        head_dim: ``d'`` (default 32).
        use_residual: keep ``W_Res e_m`` (AutoInt's residual connections).
        attention_dropout: dropout on the attention weights while training.
        deep_layer_sizes: AutoInt+: a parallel ReLU tower over the flattened fields (empty: none).
        dropout: that tower's dropout.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 32,
        use_residual: bool = True,
        attention_dropout: float = 0.0,
        deep_layer_sizes: Sequence[int] = (),
        dropout: float = 0.0,
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            user_feature_names=(),
            num_layers=num_layers,
            num_heads=num_heads,
            head_dim=head_dim,
            use_interest=False,
            use_attention=True,
            use_residual=use_residual,
            attention_dropout=attention_dropout,
            deep_layer_sizes=deep_layer_sizes,
            dropout=dropout,
            **fields,
        )


@dataclasses.dataclass
class AutoIntConfig(ModelConfig):
    """Settings of :class:`AutoInt`: the interacting layers."""

    model_class = AutoInt

    num_layers: int = 3
    num_heads: int = 2
    head_dim: int = 32
    use_residual: bool = True
    attention_dropout: float = 0.0
    deep_layer_sizes: List[int] = dataclasses.field(default_factory=list)
    dropout: float = 0.0
