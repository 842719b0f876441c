"""CTR models built on the shared arches of :mod:`iarm_torchrec.modules`."""

from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.iarm import IARM, IARMConfig, IARMTrain

__all__ = ["CTRTrain", "IARM", "IARMConfig", "IARMTrain"]
