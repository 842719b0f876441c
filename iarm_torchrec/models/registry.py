"""Models by name: how the trainer, the CLI and export build any model from settings.

Each entry maps a model name to its config dataclass. A config class takes
``features: FeatureConfig`` plus its own keyword settings, validates them when built,
and offers ``build(device) -> nn.Module``, ``to_dict()`` and ``from_dict()``.

Example::

    >>> from iarm_torchrec.features import FeatureConfig, SparseFeature
    >>> features = FeatureConfig([SparseFeature("user", 10), SparseFeature("item", 10)],
    ...                          user_feature_names=["user"], embedding_dim=8)
    >>> cfg = make_config("iarm", features, num_layers=2)
    >>> config_from_dict(model_config_dict(cfg)) == cfg
    True
"""

from typing import Any, Dict, List, Type

from iarm_torchrec.features import FeatureConfig
from iarm_torchrec.models.afm import AFMConfig
from iarm_torchrec.models.autoint import AutoIntConfig
from iarm_torchrec.models.dcn import DCNConfig
from iarm_torchrec.models.deep_crossing import DeepCrossingConfig
from iarm_torchrec.models.deepfm import DeepFMConfig
from iarm_torchrec.models.fm import FMConfig
from iarm_torchrec.models.iarm import IARMConfig
from iarm_torchrec.models.nfm import NFMConfig
from iarm_torchrec.models.pnn import PNNConfig
from iarm_torchrec.models.wide_deep import WideAndDeepConfig

MODEL_CONFIGS: Dict[str, Type[Any]] = {
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


def model_names() -> List[str]:
    return sorted(MODEL_CONFIGS)


def make_config(name: str, features: FeatureConfig, **settings: Any) -> Any:
    """The validated config of model ``name`` over ``features``."""
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose one of {model_names()}")
    return MODEL_CONFIGS[name](features=features, **settings)


def model_config_dict(config: Any) -> Dict[str, Any]:
    """``{"model": name, "config": {...}}``, JSON-ready, for run folders and exports."""
    for name, cls in MODEL_CONFIGS.items():
        if type(config) is cls:
            return {"model": name, "config": config.to_dict()}
    raise ValueError(f"{type(config).__name__} is not a registered model config")


def config_from_dict(data: Dict[str, Any]) -> Any:
    """Inverse of :func:`model_config_dict`."""
    return MODEL_CONFIGS[data["model"]].from_dict(dict(data["config"]))
