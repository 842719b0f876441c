"""The first-order ("linear", "wide") term of FM-family baselines: one scalar weight per value."""

import dataclasses
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


def first_order_embedding_bag_collection(embedding_bag_collection: EmbeddingBagCollection) -> EmbeddingBagCollection:
    """The per-value weight tables ``w_i`` that go with ``embedding_bag_collection``.

    One table ``<table>_linear`` of ``embedding_dim=1`` per table of the given collection, with
    the same features, vocabulary and pooling (a multi-hot field's weight is the mean of its
    values' weights, as its vector is the mean of theirs, paper Eq. 3), on the same device
    (``meta`` included, so that sharding allocates both alike).

    Example::

        >>> from torchrec import EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name="t_a", embedding_dim=4, num_embeddings=10, feature_names=["a"])])
        >>> [(c.name, c.embedding_dim, c.num_embeddings) for c in
        ...  first_order_embedding_bag_collection(ebc).embedding_bag_configs()]
        [('t_a_linear', 1, 10)]
    """
    tables = [
        dataclasses.replace(c, name=f"{c.name}_linear", embedding_dim=1)
        for c in embedding_bag_collection.embedding_bag_configs()
    ]
    return EmbeddingBagCollection(tables=tables, device=embedding_bag_collection.device)


class FirstOrderArch(nn.Module):
    """``w_0 + sum_i w_i(x_i) + sum_m w_m x_m``: the linear part of FM (Rendle, ICDM 2010),
    the wide part of Wide & Deep (Cheng et al., DLRS 2016) and the first-order term of DeepFM,
    AFM and NFM.

    A categorical field contributes the learned scalar weight of its value (looked up in an
    ``EmbeddingBagCollection`` whose tables have ``embedding_dim=1``); a numerical field ``m``
    contributes ``w_m x_m``; ``w_0`` is a global bias. These are the original models' first-order
    weights, separate from the ``D``-dimensional embeddings (not a projection of them).

    Args:
        embedding_bag_collection: dimension-1 tables covering ``sparse_feature_names``
            (see :func:`first_order_embedding_bag_collection`).
        sparse_feature_names: the categorical fields to sum over.
        dense_in_features: ``N``, the number of numerical fields.

    Example::

        >>> from torchrec import EmbeddingBagConfig
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name=f"t_{f}", embedding_dim=1, num_embeddings=10, feature_names=[f])
        ...     for f in ["user", "item"]])
        >>> arch = FirstOrderArch(ebc, ["user", "item"], dense_in_features=2)
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["user", "item"], values=torch.tensor([1, 2, 3, 4]), lengths=torch.tensor([1, 1, 1, 1]))
        >>> arch(torch.rand(2, 2), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        sparse_feature_names: Sequence[str],
        dense_in_features: int,
    ) -> None:
        super().__init__()
        configs = embedding_bag_collection.embedding_bag_configs()
        wide = {c.name: c.embedding_dim for c in configs if c.embedding_dim != 1}
        if wide:
            raise ValueError(
                f"first-order tables hold one scalar weight per value, but {wide} have embedding_dim != 1: "
                f"build them with embedding_dim=1 (first_order_embedding_bag_collection does)"
            )
        covered = {name for c in configs for name in c.feature_names}
        missing = [n for n in sparse_feature_names if n not in covered]
        if missing:
            raise ValueError(f"the first-order tables lack features {missing}; they cover {sorted(covered)}")
        self.embedding_bag_collection: EmbeddingBagCollection = embedding_bag_collection
        self.sparse_feature_names: List[str] = list(sparse_feature_names)
        # w_m of the numerical fields, N, and the global bias w_0
        self.dense_weight: nn.Parameter = nn.Parameter(torch.zeros(dense_in_features))
        self.bias: nn.Parameter = nn.Parameter(torch.zeros(1))

    @classmethod
    def for_fields(
        cls,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        linear_embedding_bag_collection: Optional[EmbeddingBagCollection] = None,
    ) -> "FirstOrderArch":
        """The first-order arch over the fields of ``embedding_bag_collection``; its weight
        tables are ``linear_embedding_bag_collection`` or, by default, built to match."""
        tables = (
            first_order_embedding_bag_collection(embedding_bag_collection)
            if linear_embedding_bag_collection is None
            else linear_embedding_bag_collection
        )
        names = [n for c in embedding_bag_collection.embedding_bag_configs() for n in c.feature_names]
        return cls(tables, names, dense_in_features)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            dense_features: ``B x N`` numerical values ``x_m``.
            sparse_features: categorical values keyed by feature name.

        Returns:
            ``B`` first-order logits.
        """
        by_name: Dict[str, torch.Tensor] = self.embedding_bag_collection(sparse_features).to_dict()
        sparse = torch.cat([by_name[name] for name in self.sparse_feature_names], dim=1)  # B x F
        return sparse.sum(dim=1) + dense_features @ self.dense_weight + self.bias
