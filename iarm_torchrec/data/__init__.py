"""Data: readers of the original formats, preprocessing to npy shards, the feature spec, the
on-disk parts, the preprocessed-data cache, the loader.

The public names load on first use (PEP 562), so that preprocessing workers, which import
``iarm_torchrec.data.*`` modules, do not pay for torch and torchrec (the loader needs them).
"""

from typing import Dict

from iarm_torchrec import lazy_exports

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
__getattr__ = lazy_exports("iarm_torchrec.data", _EXPORTS)
