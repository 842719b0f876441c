"""IARM: the click-through-rate model of the paper, as a TorchRec module."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from typing_extensions import Unpack

from iarm_torchrec.models.config import ModelConfig
from iarm_torchrec.models.field_model import FieldModel, FieldOptions
from iarm_torchrec.modules.interacting import InteractingArch
from iarm_torchrec.modules.interest import InterestArch
from iarm_torchrec.modules.checks import check_choice
from iarm_torchrec.modules.cross import cross_net
from iarm_torchrec.modules.output import OutputArch
from iarm_torchrec.modules.products import PRODUCTS, product_arch
from iarm_torchrec.modules.tower import Tower


class IARM(FieldModel):
    """Interest + multi-head Attention + Residual CTR Model (paper Eq. 1-12).

    One sample's way to its logit::

        fields  = FieldEmbeddingArch(dense, sparse)        B x M x D       (Eq. 2-4)
        U       = InterestArch(fields[:, user fields])     B x K           (Eq. 5-6)
        e_Res   = InteractingArch(fields)                  B x M x H d'    (Eq. 7-11)
        logit   = OutputArch([U ; e_1^Res ; ... ; e_M^Res])  B             (Eq. 12)

    **What Eq. 12 concatenates.** The overview says three feature matrices are merged before
    the output layer: the user interest ``U``, the attention's combinatorial features
    ``e~_m`` and the raw features that the residual keeps (``W_Res e_m``). Eq. 11 already
    merges the last two into ``e_m^Res`` (by sum, inside the ReLU), and Eq. 12 concatenates
    the ``e_m^Res`` of all ``M`` fields; so the output layer reads ``U`` followed by the
    flattened ``B x (M H d')`` last-layer output, ``K + M H d'`` features in all. Concatenating
    the raw ``e_m`` a second time would double-count what the residual already carries. With
    ``num_layers=0`` the interacting part is the raw ``e_m`` (Fig. 4's zero-layer point); with
    ``use_interest=False`` (IARM*) ``U`` is left out.

    Ablations: ``use_interest=False`` (IARM*), ``use_attention=False`` (IRM),
    ``use_residual=False`` (IARM-), ``num_layers=0``.

    **Extending.** Each arch is made by a ``build_*_arch`` method; a subclass overrides one
    to replace that arch (the replacement must keep the shapes above and expose
    ``output_dim``)::

        class MyIARM(IARM):
            def build_interest_arch(self, in_features: int, layer_sizes: Sequence[int]) -> nn.Module:
                return MyInterest(in_features)   # B x n x D -> B x output_dim

    Example::

        >>> from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name=f"t_{f}", embedding_dim=8, num_embeddings=10, feature_names=[f])
        ...     for f in ["user", "item"]])
        >>> model = IARM(ebc, dense_in_features=2, user_feature_names=["user"])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
        >>> model(torch.rand(2, 2), kjt).shape
        torch.Size([2])

    Args:
        embedding_bag_collection / dense_in_features / dense_feature_names /
            multi_hot_feature_names: the field inputs (:class:`FieldModel`).
        user_feature_names: the user fields ``u_1..u_n`` (sparse or dense names) of Eq. 5.
        interest_layer_sizes: sizes of the interest MLP's ReLU layers (Eq. 6 uses four).
        num_layers: interacting layers (default 3).
        num_heads: ``H`` (default 2).
        head_dim: ``d'`` (default 32).
        use_interest / use_attention / use_residual: the paper's ablation switches.
        dropout / norm: regularizers of the towers (interest, product, deep); not in the paper.
        attention_dropout / attention_layer_norm: the interacting layers'
            departures from the paper (:class:`~iarm_torchrec.modules.interacting.InteractingLayer`).
        product: ``"none"`` (the paper), ``"inner"`` or ``"outer"``: PNN's product signal ``p``
            of the field vectors, joined before the output layer (a departure from the paper:
            attention with a linear output cannot form products of fields).
        product_layer_sizes: a ReLU tower over ``[flatten(e); p]`` (PNN's) whose output is
            joined instead of ``p`` itself (empty: ``p`` is joined as it is).
        deep_layer_sizes: IARM+: a parallel ReLU tower over the flattened field vectors, joined
            before the output layer (as AutoInt+ adds one to AutoInt); empty: none.
        num_cross_layers / cross_type: a cross network over the flattened field vectors
            (:func:`~iarm_torchrec.modules.cross.cross_net`, DCN's), its ``B x M D`` output joined
            before the output layer: explicit products of every degree up to ``L + 1``; 0 layers
            (the default): none. ``cross_type`` ``"matrix"`` (DCN-V2's, the default) or ``"vector"``.

    The departures are off by default, so ``IARM(...)`` is the paper's model; each is a
    setting of :class:`IARMConfig` and of ``iarm train --model-config``.
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        user_feature_names: Sequence[str],
        interest_layer_sizes: Sequence[int] = (256, 128, 64, 32),
        num_layers: int = 3,
        num_heads: int = 2,
        head_dim: int = 32,
        use_interest: bool = True,
        use_attention: bool = True,
        use_residual: bool = True,
        dropout: float = 0.0,
        norm: str = "none",
        attention_dropout: float = 0.0,
        attention_layer_norm: bool = False,
        product: str = "none",
        product_layer_sizes: Sequence[int] = (),
        deep_layer_sizes: Sequence[int] = (),
        num_cross_layers: int = 0,
        cross_type: str = "matrix",
        **fields: Unpack[FieldOptions],
    ) -> None:
        super().__init__(embedding_bag_collection, dense_in_features, **fields)
        names, dim = self.field_names, self.embedding_dim
        self.tower_options: Dict[str, Any] = {"dropout": dropout, "norm": norm}
        unknown = [n for n in user_feature_names if n not in names]
        if unknown:
            raise ValueError(f"user_feature_names {unknown} are not fields of the model; known fields: {names}")
        if use_interest and not user_feature_names:
            raise ValueError("the interest arch needs user fields: give user_feature_names, or set use_interest=False")
        self.user_feature_names: List[str] = list(user_feature_names)
        self.register_buffer(
            "user_field_index",
            torch.tensor([names.index(n) for n in user_feature_names], dtype=torch.long),
            persistent=False,
        )
        self.interest_arch: Optional[nn.Module] = (
            self.build_interest_arch(len(user_feature_names) * dim, interest_layer_sizes) if use_interest else None
        )
        self.interacting_arch: nn.Module = self.build_interacting_arch(
            dim, num_layers, num_heads, head_dim, use_attention, use_residual,
            attention_dropout=attention_dropout, layer_norm=attention_layer_norm,
        )  # fmt: skip
        check_choice("product", product, ("none", *PRODUCTS))
        self.product_arch: Optional[nn.Module] = None if product == "none" else product_arch(product, len(names), dim)
        self.product_tower: Optional[Tower] = (
            Tower(self.flat_dim + self.product_arch.output_dim, product_layer_sizes, name="product_layer_sizes", **self.tower_options)
            if self.product_arch is not None and product_layer_sizes
            else None
        )
        self.deep_arch: Optional[Tower] = (
            Tower(self.flat_dim, deep_layer_sizes, name="deep_layer_sizes", **self.tower_options) if deep_layer_sizes else None
        )
        cross = cross_net(self.flat_dim, num_cross_layers, cross_type)  # checks the settings either way
        self.cross_arch: Optional[nn.Module] = cross if num_cross_layers > 0 else None
        widths = [
            self.interest_arch.output_dim if self.interest_arch is not None else 0,
            len(names) * self.interacting_arch.output_dim,
            _width(self.product_tower) or _width(self.product_arch),
            _width(self.deep_arch),
            self.flat_dim if self.cross_arch is not None else 0,
        ]
        self.output_arch: nn.Module = self.build_output_arch(sum(widths))

    def build_interest_arch(self, in_features: int, layer_sizes: Sequence[int]) -> nn.Module:
        """``B x n x D`` user-field embeddings -> ``B x output_dim`` interest (Eq. 5-6)."""
        return InterestArch(in_features, layer_sizes, **self.tower_options)

    def build_interacting_arch(
        self,
        in_dim: int,
        num_layers: int,
        num_heads: int,
        head_dim: int,
        use_attention: bool,
        use_residual: bool,
        attention_dropout: float = 0.0,
        layer_norm: bool = False,
    ) -> nn.Module:
        """``B x M x D`` -> ``B x M x output_dim`` (Eq. 7-11)."""
        return InteractingArch(
            in_dim, num_layers, num_heads, head_dim, use_attention, use_residual, attention_dropout, layer_norm
        )

    def build_output_arch(self, in_features: int) -> nn.Module:
        """``B x in_features`` -> ``B`` logits (Eq. 12 before the sigmoid)."""
        return OutputArch(in_features)

    def _logits(self, fields: torch.Tensor, interacted: torch.Tensor) -> torch.Tensor:
        parts = [interacted.flatten(1)]  # B x M H d'
        flat = fields.flatten(1)  # B x M D, what the departures read
        if self.interest_arch is not None:
            users = fields.index_select(1, self.user_field_index)  # B x n x D (Eq. 5)
            parts.insert(0, self.interest_arch(users))  # B x K (Eq. 6)
        if self.product_arch is not None:
            products = self.product_arch(fields)  # B x P
            if self.product_tower is not None:
                products = self.product_tower(torch.cat([flat, products], dim=1))
            parts.append(products)
        if self.deep_arch is not None:
            parts.append(self.deep_arch(flat))  # IARM+
        if self.cross_arch is not None:
            parts.append(self.cross_arch(flat))  # B x M D
        return self.output_arch(torch.cat(parts, dim=1))  # Eq. 12

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            dense_features: ``B x N`` numerical fields.
            sparse_features: categorical fields keyed by name.

        Returns:
            ``B`` logits; ``torch.sigmoid`` of them is Eq. 12's click probability.
        """
        fields = self.embedding_arch(dense_features, sparse_features)
        return self._logits(fields, self.interacting_arch(fields))

    def forward_with_attention(
        self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Logits plus each interacting layer's ``B x H x M x M`` attention (Eq. 7), for Fig. 5."""
        fields = self.embedding_arch(dense_features, sparse_features)
        interacted, attention = self.interacting_arch.forward_with_attention(fields)
        return self._logits(fields, interacted), attention


def _width(arch: Optional[nn.Module]) -> int:
    """``arch.output_dim``, 0 for a missing arch."""
    return int(arch.output_dim) if arch is not None else 0


@dataclass
class IARMConfig(ModelConfig):
    """Everything needed to rebuild an IARM: its fields and its arch settings.

    Validated when built; :meth:`build` makes the tables and the model in one step
    (``build(device, model_class)``: ``model_class`` may be a subclass of :class:`IARM`).

    Example::

        >>> from iarm_torchrec.features import FeatureConfig, SparseFeature
        >>> cfg = IARMConfig(FeatureConfig([SparseFeature("user", 10), SparseFeature("item", 10)],
        ...                                user_feature_names=["user"], embedding_dim=8), num_layers=2)
        >>> type(cfg.build()).__name__
        'IARM'
    """

    model_class = IARM

    interest_layer_sizes: List[int] = field(default_factory=lambda: [256, 128, 64, 32])
    num_layers: int = 3
    num_heads: int = 2
    head_dim: int = 32
    use_interest: bool = True
    use_attention: bool = True
    use_residual: bool = True
    dropout: float = 0.0
    norm: str = "none"
    attention_dropout: float = 0.0
    attention_layer_norm: bool = False
    product: str = "none"
    product_layer_sizes: List[int] = field(default_factory=list)
    deep_layer_sizes: List[int] = field(default_factory=list)
    num_cross_layers: int = 0
    cross_type: str = "matrix"

    def model_arguments(self, device: Optional[torch.device]) -> Dict[str, Any]:
        """The shared arguments plus the user fields of Eq. 5."""
        return dict(super().model_arguments(device), user_feature_names=self.features.user_feature_names)
