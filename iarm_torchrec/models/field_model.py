"""What every model here starts from: the fields as a ``B x M x D`` matrix (paper Eq. 2-4).

Every model takes the same field inputs (the ``EmbeddingBagCollection`` and the numerical
fields) and puts the same :class:`FieldEmbeddingArch` in front, so that IARM and its
baselines compare on the same inputs. :class:`FieldModel` holds that front;
:class:`FirstOrderModel` adds the first-order weights of the FM family.
"""

import math
from typing import List, Optional, Sequence, TypedDict

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from typing_extensions import Unpack

from iarm_torchrec.modules.field_embedding import FieldEmbeddingArch
from iarm_torchrec.modules.linear import FirstOrderArch


class FieldOptions(TypedDict, total=False):
    """The optional field inputs every model passes on to :class:`FieldModel` (``**fields``)."""

    dense_feature_names: Sequence[str]
    multi_hot_feature_names: Sequence[str]


class FieldModel(nn.Module):
    """Base of the CTR models: builds ``self.embedding_arch`` from the field inputs.

    A subclass adds its arches and a ``forward(dense_features, sparse_features) -> B logits``
    that starts with ``self.embedding_arch(dense_features, sparse_features)`` (``B x M x D``).

    Args:
        embedding_bag_collection: one ``D``-dim table per categorical field, all of one
            ``embedding_dim`` (may be on ``meta``; fields are found by name).
        dense_in_features: ``N``, the number of numerical fields.
        dense_feature_names: their names (default ``dense_i``).
        multi_hot_feature_names: multi-valued fields; their tables pool by ``MEAN`` (Eq. 3).

    Example::

        >>> from iarm_torchrec.models.toy import toy_inputs
        >>> ebc, dense, kjt = toy_inputs()
        >>> model = FieldModel(ebc, dense_in_features=2)
        >>> model.num_fields, model.embedding_dim, model.flat_dim, model.field_names
        (4, 8, 32, ['user', 'item', 'dense_0', 'dense_1'])
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_feature_names: Sequence[str] = (),
        multi_hot_feature_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.embedding_arch: FieldEmbeddingArch = FieldEmbeddingArch(
            embedding_bag_collection, dense_in_features, dense_feature_names, multi_hot_feature_names
        )

    @property
    def field_names(self) -> List[str]:
        """The ``M`` field names, in the order of the field matrix's second axis."""
        return self.embedding_arch.field_names

    @property
    def num_fields(self) -> int:
        """``M``."""
        return self.embedding_arch.num_fields

    @property
    def embedding_dim(self) -> int:
        """``D``."""
        return self.embedding_arch.embedding_dim

    @property
    def flat_dim(self) -> int:
        """``M D``, the width of the flattened field matrix ``[v_1; ...; v_M]``."""
        return self.num_fields * self.embedding_dim

    def logit_bias(self) -> torch.Tensor:
        """The bias added last to the logit: here ``self.output_arch``'s (an
        :class:`~iarm_torchrec.modules.output.OutputArch`); a model that ends otherwise overrides it."""
        return self.output_arch.linear.bias

    @torch.no_grad()
    def start_at_click_rate(self, click_rate: float) -> None:
        """Initialise :meth:`logit_bias` to ``log(p / (1 - p))`` of the training click rate ``p``,
        so that the untrained model predicts the click rate rather than 0.5: the log loss starts
        at the click rate's entropy, not at ``ln 2``, and no model spends its first epoch
        learning the base rate. Only an initial value: every model keeps its equation."""
        p = min(max(click_rate, 1e-6), 1 - 1e-6)
        self.logit_bias().fill_(math.log(p / (1 - p)))


FACTOR_INIT_SCALE = 0.01
"""Where the factor vectors of FM-family models start: uniform in ``±0.01``.

The second-order term sums ``M(M-1)/2`` inner products of field vectors (741 pairs for
Criteo's 39 fields), and a numerical field's vector is ``v_m x_m`` with ``x_m`` up to about 10
after ``log1p``: started at TorchRec's ``±1/sqrt(n)`` (up to ±0.5 for small vocabularies) or
Xavier's range, that sum dominates the logit and the first epoch diverges (measured on the
built-in synthetic data: FM's first-epoch training loss 1.78, DeepFM's 1.65). Factorization
machines are initialised small (Rendle's libFM: ``N(0, 0.1)``; DeepCTR-Torch and FuxiCTR:
``N(0, 1e-4)``): with ``±0.01`` the same runs start at 0.53 and 0.52. The equations are unchanged."""


class FirstOrderModel(FieldModel):
    """:class:`FieldModel` plus ``self.first_order_arch``, the per-value weights
    ``w_0 + sum_i w_i x_i`` of FM, Wide & Deep, DeepFM, AFM and NFM.

    Args:
        embedding_bag_collection / dense_in_features / fields: the field inputs, as for
            :class:`FieldModel`.
        linear_embedding_bag_collection: the first-order weight tables (``embedding_dim=1``);
            by default one per table of ``embedding_bag_collection``, on its device.
        factor_init_scale: for the models with factorized pairs (FM, DeepFM, NFM, AFM): the
            numerical fields' vectors ``v_m`` start uniform in ``±factor_init_scale``, as
            their configs start the tables (:data:`FACTOR_INIT_SCALE`); ``None`` keeps
            the field embedding's own initialisation.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
        factor_init_scale: Optional[float] = None,
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, **fields)
        self.first_order_arch: FirstOrderArch = FirstOrderArch.for_fields(
            embedding_bag_collection, dense_in_features, linear_embedding_bag_collection
        )
        if factor_init_scale is not None:
            nn.init.uniform_(self.embedding_arch.dense_embedding, -factor_init_scale, factor_init_scale)

    def logit_bias(self) -> torch.Tensor:
        """``w_0``, the global bias of the first-order term."""
        return self.first_order_arch.bias
