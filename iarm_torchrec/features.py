"""The fields a model sees, described once: the source of every EmbeddingBagCollection.

A :class:`FeatureConfig` is what the data side's feature spec turns into and what every model
config holds; it builds the ``EmbeddingBagCollection`` so nobody types table sizes twice.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection


@dataclass(frozen=True)
class SparseFeature:
    """One categorical field.

    Args:
        name: feature name, the key in the ``KeyedJaggedTensor``.
        num_embeddings: vocabulary size (rows of its table).
        multi_hot: whether a sample may carry several values; such a field is the mean of
            its values' vectors (Eq. 3), so its table pools by ``MEAN``.
    """

    name: str
    num_embeddings: int
    multi_hot: bool = False

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a SparseFeature needs a non-empty name")
        if self.num_embeddings <= 0:
            raise ValueError(f"feature {self.name!r}: num_embeddings must be positive, got {self.num_embeddings}")


@dataclass
class FeatureConfig:
    """All fields of a dataset and the shared embedding size.

    Args:
        sparse_features: the categorical fields, one table each.
        dense_feature_names: the numerical fields, in the column order of ``dense_features``.
        user_feature_names: the fields (sparse or dense) that describe the user (Eq. 5).
        embedding_dim: ``D``, shared by every field (Eq. 4 puts all fields in one space).

    Example::

        >>> fc = FeatureConfig([SparseFeature("user", 100), SparseFeature("genres", 18, multi_hot=True)],
        ...                    dense_feature_names=["age"], user_feature_names=["user"], embedding_dim=8)
        >>> [(c.name, c.pooling.name) for c in fc.embedding_bag_configs()]
        [('t_user', 'SUM'), ('t_genres', 'MEAN')]
    """

    sparse_features: List[SparseFeature]
    dense_feature_names: List[str] = field(default_factory=list)
    user_feature_names: List[str] = field(default_factory=list)
    embedding_dim: int = 16

    def __post_init__(self) -> None:
        self.sparse_features = [
            f if isinstance(f, SparseFeature) else SparseFeature(**f) for f in self.sparse_features
        ]
        self.dense_feature_names = list(self.dense_feature_names)
        self.user_feature_names = list(self.user_feature_names)
        if not self.sparse_features:
            raise ValueError("FeatureConfig needs at least one sparse feature")
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")

    @property
    def field_names(self) -> List[str]:
        return [f.name for f in self.sparse_features] + list(self.dense_feature_names)

    @property
    def multi_hot_feature_names(self) -> List[str]:
        return [f.name for f in self.sparse_features if f.multi_hot]

    def embedding_bag_configs(self, init_scale: Optional[float] = None) -> List[EmbeddingBagConfig]:
        """One table ``t_<name>`` per sparse field: ``MEAN`` pooling for multi-hot fields
        (Eq. 3), ``SUM`` for one-hot fields (identical for one value, and it leaves them free
        for row-wise sharding, which mean pooling must avoid). Rows start uniform in
        ``±init_scale``, or in TorchRec's default ``±1/sqrt(num_embeddings)``."""
        scale = {} if init_scale is None else {"weight_init_min": -init_scale, "weight_init_max": init_scale}
        return [
            EmbeddingBagConfig(
                name=f"t_{f.name}",
                embedding_dim=self.embedding_dim,
                num_embeddings=f.num_embeddings,
                feature_names=[f.name],
                pooling=PoolingType.MEAN if f.multi_hot else PoolingType.SUM,
                **scale,
            )
            for f in self.sparse_features
        ]

    def build_embedding_bag_collection(
        self, device: Optional[torch.device] = None, init_scale: Optional[float] = None
    ) -> EmbeddingBagCollection:
        """The tables, on ``device`` (``torch.device("meta")`` to hand them to sharding)."""
        return EmbeddingBagCollection(tables=self.embedding_bag_configs(init_scale), device=device)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "sparse_features": [vars(f).copy() for f in self.sparse_features],
            "dense_feature_names": list(self.dense_feature_names),
            "user_feature_names": list(self.user_feature_names),
            "embedding_dim": self.embedding_dim,
        }

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FeatureConfig":
        return cls(**data)
