"""Data: readers of the original formats, preprocessing to npy shards, the feature spec, the
on-disk parts, the preprocessed-data cache, the loader.

The public names load on first use (PEP 562), so that preprocessing workers, which import
``iarm_torchrec.data.*`` modules, do not pay for torch and torchrec (the loader needs them).
"""

import importlib
from typing import Any, Dict

_EXPORTS: Dict[str, str] = {
    "DataSource": "iarm_torchrec.data.cache",
    "FeatureSpec": "iarm_torchrec.data.spec",
    "PADDING_LABEL": "iarm_torchrec.data.loader",
    "Part": "iarm_torchrec.data.parts",
    "ShardedBatchLoader": "iarm_torchrec.data.loader",
    "SparseFieldSpec": "iarm_torchrec.data.spec",
    "prepare_data": "iarm_torchrec.data.cache",
    "read_part": "iarm_torchrec.data.parts",
    "write_part": "iarm_torchrec.data.parts",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iarm_torchrec.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
