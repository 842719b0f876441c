"""Models by name: how the trainer, the CLI, experiments and export build any model from settings.

Each entry maps a model name to its config dataclass (:class:`~iarm_torchrec.models.config.ModelConfig`).
Settings reach a model only through that config: :func:`check_model_settings` checks a
``{setting: value}`` mapping against the model's config before any data is read (unknown
names, wrong types, and every value rule of the model's modules, by building it on ``meta``
over stand-in fields), and :func:`make_config` builds the config over the real fields.

Example::

    >>> from iarm_torchrec.features import FeatureConfig, SparseFeature
    >>> features = FeatureConfig([SparseFeature("user", 10), SparseFeature("item", 10)],
    ...                          user_feature_names=["user"], embedding_dim=8)
    >>> cfg = make_config("iarm", features, num_layers=2)
    >>> config_from_dict(model_config_dict(cfg)) == cfg
    True
    >>> check_model_settings("dcn", {"num_cross_layers": 2})["num_cross_layers"]
    2
    >>> check_model_settings("fm", {"num_layers": 5})
    Traceback (most recent call last):
    ...
    ValueError: model 'fm' has no setting 'num_layers'; fm takes factor_init_scale (float, default 0.01)
"""

from typing import Any, Dict, List, Mapping, Type

from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models.afm import AFMConfig
from iarm_torchrec.models.autoint import AutoIntConfig
from iarm_torchrec.models.config import ModelConfig
from iarm_torchrec.models.dcn import DCNConfig
from iarm_torchrec.models.deep_crossing import DeepCrossingConfig
from iarm_torchrec.models.deepfm import DeepFMConfig
from iarm_torchrec.models.fm import FMConfig
from iarm_torchrec.models.iarm import IARMConfig
from iarm_torchrec.models.nfm import NFMConfig
from iarm_torchrec.models.pnn import PNNConfig
from iarm_torchrec.models.wide_deep import WideAndDeepConfig

MODEL_CONFIGS: Dict[str, Type[ModelConfig]] = {
    "iarm": IARMConfig,
    # the paper's baselines (Table 2), all on the same field embedding
    "fm": FMConfig,
    "wide_deep": WideAndDeepConfig,
    "deepfm": DeepFMConfig,
    "afm": AFMConfig,
    "dcn": DCNConfig,
    "nfm": NFMConfig,
    "pnn": PNNConfig,
    "autoint": AutoIntConfig,
    "deep_crossing": DeepCrossingConfig,
}

MODEL_NAMES: List[str] = sorted(MODEL_CONFIGS)
"""The registered model names: the one choice list of ``--model`` everywhere."""


def config_class(name: str) -> Type[ModelConfig]:
    """The config class of model ``name``."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    return MODEL_CONFIGS[name]


def describe_settings(name: str) -> str:
    """``"num_layers (int, default 3), ..."``: what model ``name`` takes, for messages and help."""
    cls = config_class(name)
    types, defaults = cls.setting_types(), cls.setting_defaults()
    if not defaults:
        return f"{name} takes no settings of its own"
    listed = ", ".join(f"{k} ({_type_name(types[k])}, default {defaults[k]!r})" for k in sorted(defaults))
    return f"{name} takes {listed}"


def check_model_settings(name: str, settings: Mapping[str, Any], embedding_dim: int = 16) -> Dict[str, Any]:
    """Model ``name``'s complete settings (defaults filled in) after checking ``settings``:
    names the model knows, values of the annotated types, and every value rule of the
    model's modules (the config is built on ``meta`` over two stand-in fields, one of them a
    user field). Raises ``ValueError`` naming the model and the setting."""
    cls = config_class(name)
    defaults, types = cls.setting_defaults(), cls.setting_types()
    for key, value in settings.items():
        if key not in defaults:
            raise ValueError(f"model {name!r} has no setting {key!r}; {describe_settings(name)}")
        if not _has_type(value, types[key]):
            raise ValueError(
                f"model {name!r}: setting {key!r} must be {_type_name(types[key])}, got {value!r}"
            )
    full = {**defaults, **{k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}}
    stand_in = FeatureConfig(
        [SparseFeature("user", 2), SparseFeature("item", 2)], ["dense"], ["user"], embedding_dim
    )
    try:
        cls(features=stand_in, **full)
    except ValueError as error:
        raise ValueError(f"model {name!r}: {error}") from None
    return full


def make_config(name: str, features: FeatureConfig, **settings: Any) -> ModelConfig:
    """The validated config of model ``name`` over ``features``."""
    return config_class(name)(features=features, **settings)


def model_config_dict(config: ModelConfig) -> Dict[str, Any]:
    """``{"model": name, "config": {...}}``, JSON-ready, for run folders and exports."""
    for name, cls in MODEL_CONFIGS.items():
        if type(config) is cls:
            return {"model": name, "config": config.to_dict()}
    raise ValueError(f"{type(config).__name__} is not a registered model config")


def config_from_dict(data: Dict[str, Any]) -> ModelConfig:
    """Inverse of :func:`model_config_dict`."""
    return config_class(data["model"]).from_dict(dict(data["config"]))


def _has_type(value: Any, annotation: Any) -> bool:
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    origin = getattr(annotation, "__origin__", None)
    if origin in (list, List):
        (item,) = annotation.__args__
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    return True


def _type_name(annotation: Any) -> str:
    if getattr(annotation, "__origin__", None) in (list, List):
        return f"a list of {_type_name(annotation.__args__[0])}"
    return getattr(annotation, "__name__", str(annotation))
