"""What every model config shares: its fields, dict round trip and the build from features."""

import dataclasses
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Type, TypeVar

import torch
from torch import nn

from iarm_torchrec.features import FeatureConfig
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES

C = TypeVar("C", bound="ModelConfig")


def check_positive(**sizes: int) -> None:
    """Raise ``ValueError`` naming the first setting that is not a positive integer."""
    for name, value in sizes.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_layer_sizes(name: str, sizes: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``sizes`` is one or more positive layer sizes."""
    if not sizes or any(s <= 0 for s in sizes):
        raise ValueError(f"{name} must be one or more positive layer sizes, got {list(sizes)}")


@dataclasses.dataclass
class ModelConfig:
    """Base of the model configs: ``features`` plus the subclass's own settings.

    A subclass is a dataclass whose fields are the keyword settings of its model's
    constructor, names alike; it sets :attr:`model_class`, checks its settings in
    :meth:`validate` and gets :meth:`build`, :meth:`to_dict` and :meth:`from_dict`. The model
    is handed the ``EmbeddingBagCollection`` built from ``features`` plus the numerical fields
    (``dense_in_features``, ``dense_feature_names``) and ``multi_hot_feature_names``.

    Example::

        >>> @dataclasses.dataclass
        ... class TinyConfig(ModelConfig):
        ...     width: int = 4
        ...     def validate(self) -> None:
        ...         check_positive(width=self.width)
        >>> from iarm_torchrec.features import SparseFeature
        >>> TinyConfig(FeatureConfig([SparseFeature("a", 5)]), width=0)
        Traceback (most recent call last):
        ...
        ValueError: width must be positive, got 0
    """

    model_class: ClassVar[Type[nn.Module]]

    features: FeatureConfig

    def __post_init__(self) -> None:
        if isinstance(self.features, dict):
            self.features = FeatureConfig.from_dict(self.features)
        for name, value in self.settings().items():
            if isinstance(value, tuple):  # as JSON gives it back, so that round trips compare equal
                setattr(self, name, list(value))
        self.validate()

    def validate(self) -> None:
        """Check the settings; raise ``ValueError`` saying what to change."""

    def settings(self) -> Dict[str, Any]:
        """The model's own keyword settings: every field but ``features``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "features"}

    def model_arguments(self, device: Optional[torch.device]) -> Dict[str, Any]:
        """The constructor arguments of :attr:`model_class`, tables built on ``device``."""
        f = self.features
        return dict(
            embedding_bag_collection=f.build_embedding_bag_collection(device),
            dense_in_features=len(f.dense_feature_names),
            dense_feature_names=f.dense_feature_names,
            multi_hot_feature_names=f.multi_hot_feature_names,
            **self.settings(),
        )

    def build(self, device: Optional[torch.device] = None, model_class: Optional[Type[nn.Module]] = None) -> nn.Module:
        """Build the ``EmbeddingBagCollection`` on ``device`` (``meta`` for sharding) and the
        model around it; ``model_class`` may replace :attr:`model_class` by a subclass of it."""
        return (model_class or self.model_class)(**self.model_arguments(device))

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready settings; :meth:`from_dict` inverts it."""
        return {"features": self.features.to_dict(), **self.settings()}

    @classmethod
    def from_dict(cls: Type[C], data: Dict[str, Any]) -> C:
        return cls(**data)


@dataclasses.dataclass
class DeepModelConfig(ModelConfig):
    """Base of the configs of models with a deep MLP tower: its ``deep_layer_sizes``."""

    deep_layer_sizes: List[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_DEEP_LAYER_SIZES))

    def validate(self) -> None:
        check_layer_sizes("deep_layer_sizes", self.deep_layer_sizes)
