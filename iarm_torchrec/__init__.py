"""IARM (user interest + multi-head attention CTR model) for TorchRec."""

from iarm_torchrec.features import FeatureConfig, SparseFeature
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARM, IARMConfig, IARMTrain

__all__ = ["CTRTrain", "FeatureConfig", "IARM", "IARMConfig", "IARMTrain", "SparseFeature"]
