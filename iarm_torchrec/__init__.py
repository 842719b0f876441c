"""IARM (user interest + multi-head attention CTR model) for TorchRec.

The public names load on first use (PEP 562), so that light modules such as the data
preprocessing workers can import ``iarm_torchrec.data`` without paying for torch and torchrec.
"""

import importlib
from typing import Any, Callable, Dict

_EXPORTS: Dict[str, str] = {
    "CTRTrain": "iarm_torchrec.models.ctr_train",
    "FeatureConfig": "iarm_torchrec.features",
    "IARM": "iarm_torchrec.models.iarm",
    "IARMConfig": "iarm_torchrec.models.iarm",
    "SparseFeature": "iarm_torchrec.features",
}

__all__ = sorted(_EXPORTS)


def lazy_exports(package: str, exports: Dict[str, str]) -> Callable[[str], Any]:
    """A PEP 562 ``__getattr__`` for ``package`` that imports each of ``exports`` (name ->
    module) on first use; shared by this package and :mod:`iarm_torchrec.data`."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    return __getattr__


__getattr__ = lazy_exports("iarm_torchrec", _EXPORTS)
