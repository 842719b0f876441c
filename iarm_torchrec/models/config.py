"""What every model config shares: its fields, dict round trip, validation and the build.

A config is the typed, JSON-ready description of one model: ``features`` (the fields and
``D``) plus the model's own keyword settings. It validates by **building the model on
``meta``**: every rule about a setting lives once, in the module that owns it (as TorchRec's
modules check their arguments in their constructors), and the config reports it when it is
made, before any table is allocated.
"""

import dataclasses
import typing
from typing import Any, ClassVar, Dict, List, Optional, Type, TypeVar

import torch
from torch import nn

from iarm_torchrec.features import FeatureConfig
from iarm_torchrec.models.field_model import FACTOR_INIT_SCALE
from iarm_torchrec.modules.deep import DEFAULT_DEEP_LAYER_SIZES

C = TypeVar("C", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    """Base of the model configs: ``features`` plus the subclass's own settings.

    A subclass is a dataclass whose fields are the keyword settings of its model's
    constructor, names alike, with the same defaults; it sets :attr:`model_class` and gets
    validation, :meth:`build`, :meth:`to_dict` and :meth:`from_dict`. The model is handed the
    ``EmbeddingBagCollection`` built from ``features`` plus the numerical fields
    (``dense_in_features``, ``dense_feature_names``) and ``multi_hot_feature_names``.

    Example::

        >>> from iarm_torchrec.features import SparseFeature
        >>> from iarm_torchrec.models.dcn import DCNConfig
        >>> DCNConfig(FeatureConfig([SparseFeature("a", 5)]), cross_type="low_rank")
        Traceback (most recent call last):
        ...
        ValueError: cross_type must be one of ['vector', 'matrix'], got 'low_rank'
        >>> sorted(DCNConfig.setting_defaults())
        ['cross_type', 'deep_layer_sizes', 'dropout', 'norm', 'num_cross_layers']
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
        """Build the model on ``meta``: its modules raise ``ValueError`` naming a bad setting."""
        with torch.device("meta"):
            self.build(torch.device("meta"))

    @classmethod
    def setting_defaults(cls) -> Dict[str, Any]:
        """``{setting: default}`` of the model's own settings (every field but ``features``)."""
        defaults: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "features":
                continue
            defaults[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        return defaults

    @classmethod
    def setting_types(cls) -> Dict[str, Any]:
        """``{setting: type}`` as annotated (``int``, ``bool``, ``List[int]``, ...)."""
        hints = typing.get_type_hints(cls)
        return {name: hints[name] for name in cls.setting_defaults()}

    def settings(self) -> Dict[str, Any]:
        """The model's own keyword settings: every field but ``features``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "features"}

    def table_init_scale(self) -> Optional[float]:
        """Where the table rows start: uniform in ``±scale``, or ``None`` for TorchRec's default."""
        return None

    def model_arguments(self, device: Optional[torch.device]) -> Dict[str, Any]:
        """The constructor arguments of :attr:`model_class`, tables built on ``device``."""
        f = self.features
        return dict(
            embedding_bag_collection=f.build_embedding_bag_collection(device, self.table_init_scale()),
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
class FactorizationConfig(ModelConfig):
    """Base of the configs of models with factorized pairwise terms (FM, DeepFM, NFM, AFM):
    ``factor_init_scale``, where their factor vectors start (tables and numerical ``v_m``)."""

    factor_init_scale: float = FACTOR_INIT_SCALE

    def table_init_scale(self) -> Optional[float]:
        return self.factor_init_scale


@dataclasses.dataclass
class DeepModelConfig(ModelConfig):
    """Base of the configs of models with a deep MLP tower: its layer sizes and regularizers."""

    deep_layer_sizes: List[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_DEEP_LAYER_SIZES))
    dropout: float = 0.0
    norm: str = "none"
