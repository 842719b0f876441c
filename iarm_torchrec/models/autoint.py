"""AutoInt (Song et al., CIKM 2019): IARM's interacting layers and output, without the interest arch."""

import dataclasses
from typing import Sequence

from torchrec.modules.embedding_modules import EmbeddingBagCollection

from iarm_torchrec.models.config import ModelConfig, check_positive
from iarm_torchrec.models.iarm import IARM


class AutoInt(IARM):
    """``y = w^T [e_1^Res; ...; e_M^Res] + b`` over stacked interacting layers.

    AutoInt's interacting layer (multi-head self-attention with the plain inner product
    ``<W_Query e_m, W_Key e_k>``, concatenated heads, ``ReLU(e~_m + W_Res e_m)``) and its output
    layer are exactly IARM's Eq. 7-12 without the user interest ``U``: this is
    :class:`IARM` with ``use_interest=False`` (the paper's IARM*), under its original name, so
    it shares every arch and only fixes the switches.

    Args:
        embedding_bag_collection: one ``D``-dim table per categorical field.
        dense_in_features: ``N``, the number of numerical fields.
        dense_feature_names: their names (default ``dense_i``).
        multi_hot_feature_names: multi-valued fields (tables pooled by ``MEAN``).
        num_layers: interacting layers (AutoInt's default 3).
        num_heads: ``H`` (default 2).
        head_dim: ``d'`` (default 32).
        use_residual: keep ``W_Res e_m`` (AutoInt's residual connections).

    Example::

        >>> import torch
        >>> from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name=f"t_{f}", embedding_dim=8, num_embeddings=10, feature_names=[f])
        ...     for f in ["user", "item"]])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
        >>> model = AutoInt(ebc, dense_in_features=2, num_layers=2)
        >>> model(torch.rand(2, 2), kjt).shape, model.interest_arch is None
        (torch.Size([2]), True)
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_feature_names: Sequence[str] = (),
        multi_hot_feature_names: Sequence[str] = (),
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 32,
        use_residual: bool = True,
    ) -> None:
        super().__init__(
            embedding_bag_collection,
            dense_in_features,
            user_feature_names=(),
            dense_feature_names=dense_feature_names,
            multi_hot_feature_names=multi_hot_feature_names,
            num_layers=num_layers,
            num_heads=num_heads,
            head_dim=head_dim,
            use_interest=False,
            use_attention=True,
            use_residual=use_residual,
        )


@dataclasses.dataclass
class AutoIntConfig(ModelConfig):
    """Settings of :class:`AutoInt`: the interacting layers."""

    model_class = AutoInt

    num_layers: int = 3
    num_heads: int = 2
    head_dim: int = 32
    use_residual: bool = True

    def validate(self) -> None:
        if self.num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {self.num_layers}")
        check_positive(num_heads=self.num_heads, head_dim=self.head_dim)
