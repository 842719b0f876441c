"""Field embedding (paper Eq. 2-4): every field, categorical or numerical, as one D-vector."""

from typing import Dict, List, Sequence

import torch
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


class FieldEmbeddingArch(nn.Module):
    """Turns a sample's fields into the ``B x M x D`` matrix that every model starts from.

    * Categorical field ``i`` (Eq. 2): ``e_i = V_i x_i``, looked up by the
      ``EmbeddingBagCollection``. A multi-valued field is the **mean** of its values'
      vectors (Eq. 3); its table must therefore pool with ``PoolingType.MEAN``.
    * Numerical field ``m`` (Eq. 4): ``e_m = v_m * x_m`` with one learned vector ``v_m``
      per numerical field, in the same ``D``-dimensional space.

    Fields are found **by name** in the EBC's output (a sharded EBC may order its output
    keys differently), and laid out as ``[sparse fields in EBC config order; dense fields]``;
    :attr:`field_names` gives that order.

    Args:
        embedding_bag_collection: one table per categorical field, all of the same
            ``embedding_dim``; may live on the ``meta`` device (sharding defers allocation).
        dense_in_features: number ``N`` of numerical fields.
        dense_feature_names: names of the numerical fields (default ``dense_0..dense_{N-1}``).
        multi_hot_feature_names: categorical fields that may carry several values per
            sample; their tables must pool by ``MEAN`` (Eq. 3).

    Example::

        >>> from torchrec import EmbeddingBagConfig, EmbeddingBagCollection, KeyedJaggedTensor
        >>> ebc = EmbeddingBagCollection(tables=[
        ...     EmbeddingBagConfig(name="t_a", embedding_dim=4, num_embeddings=10, feature_names=["a"]),
        ...     EmbeddingBagConfig(name="t_g", embedding_dim=4, num_embeddings=5, feature_names=["g"],
        ...                        pooling=PoolingType.MEAN),
        ... ])
        >>> arch = FieldEmbeddingArch(ebc, dense_in_features=2, multi_hot_feature_names=["g"])
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["a", "g"], values=torch.tensor([1, 2, 0, 3, 4]), lengths=torch.tensor([1, 1, 2, 1]))
        >>> arch(torch.rand(2, 2), kjt).shape
        torch.Size([2, 4, 4])
    """

    def __init__(
        self,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_in_features: int,
        dense_feature_names: Sequence[str] = (),
        multi_hot_feature_names: Sequence[str] = (),
    ) -> None:
        super().__init__()
        configs = embedding_bag_collection.embedding_bag_configs()
        if not configs:
            raise ValueError("the EmbeddingBagCollection has no tables: give it one table per categorical field")
        dims = {c.name: c.embedding_dim for c in configs}
        if len(set(dims.values())) != 1:
            raise ValueError(
                f"all tables must share one embedding_dim so that fields can attend to each other "
                f"(Eq. 4 puts every field in the same space), got {dims}: set every "
                f"EmbeddingBagConfig.embedding_dim to the same value"
            )
        if dense_in_features < 0:
            raise ValueError(f"dense_in_features must be >= 0, got {dense_in_features}")
        dense_names = list(dense_feature_names) or [f"dense_{i}" for i in range(dense_in_features)]
        if len(dense_names) != dense_in_features:
            raise ValueError(
                f"dense_feature_names has {len(dense_names)} names but dense_in_features={dense_in_features}"
            )
        sparse_names = [name for c in configs for name in c.feature_names]
        pooling = {name: c.pooling for c in configs for name in c.feature_names}
        for name in multi_hot_feature_names:
            if name not in pooling:
                raise ValueError(f"multi-hot field {name!r} is not a feature of any table; known: {sparse_names}")
            if pooling[name] != PoolingType.MEAN:
                raise ValueError(
                    f"multi-hot field {name!r} is pooled by {pooling[name].name}, but the paper (Eq. 3) "
                    f"averages a multi-valued field's vectors: build its table with pooling=PoolingType.MEAN"
                )
        names = sparse_names + dense_names
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"field names must be unique across sparse and dense fields; repeated: {repeated}")

        self.embedding_bag_collection: EmbeddingBagCollection = embedding_bag_collection
        self.embedding_dim: int = configs[0].embedding_dim
        self.sparse_feature_names: List[str] = sparse_names
        self.dense_feature_names: List[str] = dense_names
        self.multi_hot_feature_names: List[str] = list(multi_hot_feature_names)
        # v_m of Eq. 4, one row per numerical field: N x D
        self.dense_embedding: nn.Parameter = nn.Parameter(torch.empty(dense_in_features, self.embedding_dim))
        if dense_in_features:
            nn.init.xavier_uniform_(self.dense_embedding)

    @property
    def field_names(self) -> List[str]:
        """Names of the ``M`` fields, in the order of the output's second dimension."""
        return self.sparse_feature_names + self.dense_feature_names

    @property
    def num_fields(self) -> int:
        return len(self.sparse_feature_names) + len(self.dense_feature_names)

    def forward(self, dense_features: torch.Tensor, sparse_features: KeyedJaggedTensor) -> torch.Tensor:
        """
        Args:
            dense_features: ``B x N`` numerical values ``x_m``.
            sparse_features: categorical values keyed by feature name.

        Returns:
            ``B x M x D`` field embeddings, ``M = F + N``.
        """
        pooled: KeyedTensor = self.embedding_bag_collection(sparse_features)
        by_name: Dict[str, torch.Tensor] = pooled.to_dict()
        sparse = torch.stack([by_name[name] for name in self.sparse_feature_names], dim=1)  # B x F x D
        dense = dense_features.unsqueeze(-1) * self.dense_embedding  # B x N x D (Eq. 4)
        return torch.cat([sparse, dense], dim=1)
