"""Data: readers of the original formats, preprocessing to npy shards, the feature spec, loaders."""

from iarm_torchrec.data.spec import FeatureSpec, SparseFieldSpec

__all__ = ["FeatureSpec", "SparseFieldSpec"]
