"""IARM (user interest + multi-head attention CTR model) for TorchRec.

The public names load on first use (PEP 562), so that light modules such as the data
preprocessing workers can import ``iarm_torchrec.data`` without paying for torch and torchrec.
"""

import importlib
from typing import Any, Dict

_EXPORTS: Dict[str, str] = {
    "CTRTrain": "iarm_torchrec.models.ctr_train",
    "FeatureConfig": "iarm_torchrec.features",
    "IARM": "iarm_torchrec.models.iarm",
    "IARMConfig": "iarm_torchrec.models.iarm",
    "SparseFeature": "iarm_torchrec.features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iarm_torchrec' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
