"""The feature spec: the one source of field lists and vocabulary sizes, from data to model.

A preprocessed dataset is a folder::

    DATA/spec.json                               this FeatureSpec
    DATA/<split>/part-NNNNN/labels.npy           float32 [n]         (0/1)
    DATA/<split>/part-NNNNN/dense.npy            float32 [n, N]      (columns in ``dense`` order)
    DATA/<split>/part-NNNNN/sparse.npy           int32   [n, F1]     (one-hot fields, ``one_hot_fields`` order)
    DATA/<split>/part-NNNNN/<field>.values.npy   int32   [nnz]       (one multi-hot field's ids)
    DATA/<split>/part-NNNNN/<field>.lengths.npy  int32   [n]         (its ids per sample, >= 0)

``<split>`` is ``train``, ``valid`` or ``test``; parts are read in name order and together
form the split. Ids are already vocabulary indices in ``[0, vocab_size)``.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List

from iarm_torchrec.files import PathLike, atomic_write_json

if TYPE_CHECKING:  # the model side's types; imported lazily so data workers skip torch
    from iarm_torchrec.features import FeatureConfig

SPEC_FILE = "spec.json"
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SparseFieldSpec:
    """One categorical field of a preprocessed dataset.

    Args:
        name: field name (the KJT key and the table's feature name).
        vocab_size: number of ids, out-of-vocabulary id(s) included.
        multi_hot: several ids per sample (pooled by mean, Eq. 3).
        max_length: the longest id list seen (1 for one-hot fields).
    """

    name: str
    vocab_size: int
    multi_hot: bool = False
    max_length: int = 1


@dataclass
class FeatureSpec:
    """What a preprocessed dataset holds, saved as ``spec.json`` beside its shards.

    Example::

        >>> spec = FeatureSpec("toy", [SparseFieldSpec("user", 10), SparseFieldSpec("genres", 5, True, 3)],
        ...                    dense=["age"], user_fields=["user"])
        >>> spec.one_hot_fields, spec.multi_hot_fields
        (['user'], ['genres'])
        >>> spec.to_feature_config(embedding_dim=8).embedding_dim
        8
    """

    dataset: str
    sparse: List[SparseFieldSpec]
    dense: List[str] = field(default_factory=list)
    user_fields: List[str] = field(default_factory=list)
    rows: Dict[str, int] = field(default_factory=dict)  # samples per split
    options: Dict[str, Any] = field(default_factory=dict)  # how it was preprocessed (for the record)

    def __post_init__(self) -> None:
        self.sparse = [f if isinstance(f, SparseFieldSpec) else SparseFieldSpec(**f) for f in self.sparse]
        names = [f.name for f in self.sparse] + list(self.dense)
        unknown = [u for u in self.user_fields if u not in names]
        if unknown:
            raise ValueError(f"feature spec {self.dataset!r}: user fields {unknown} are not among its fields {names}")

    @property
    def field_names(self) -> List[str]:
        return [f.name for f in self.sparse] + list(self.dense)

    @property
    def one_hot_fields(self) -> List[str]:
        return [f.name for f in self.sparse if not f.multi_hot]

    @property
    def multi_hot_fields(self) -> List[str]:
        return [f.name for f in self.sparse if f.multi_hot]

    def click_rate(self, split: str = "train") -> float:
        """The share of positive labels in ``split`` (from ``options["positives"]``; 0.5 when
        preprocessing did not count them)."""
        positives = self.options.get("positives", {}).get(split)
        rows = self.rows.get(split, 0)
        return positives / rows if positives is not None and rows else 0.5

    def to_feature_config(self, embedding_dim: int) -> "FeatureConfig":
        """The model side's description of these fields."""
        from iarm_torchrec.features import FeatureConfig, SparseFeature

        return FeatureConfig(
            sparse_features=[SparseFeature(f.name, f.vocab_size, f.multi_hot) for f in self.sparse],
            dense_feature_names=list(self.dense),
            user_feature_names=list(self.user_fields),
            embedding_dim=embedding_dim,
        )

    def save(self, data_dir: PathLike) -> Path:
        """Write ``data_dir/spec.json`` atomically."""
        return atomic_write_json(Path(data_dir) / SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, data_dir: PathLike) -> "FeatureSpec":
        path = Path(data_dir) / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no feature spec; preprocess the dataset first (iarm data ...)")
        return cls(**json.loads(path.read_text()))
