"""CTR models built on the shared arches of :mod:`iarm_torchrec.modules`: IARM and the paper's baselines."""

from iarm_torchrec.models.afm import AFM, AFMConfig
from iarm_torchrec.models.autoint import AutoInt, AutoIntConfig
from iarm_torchrec.models.config import DeepModelConfig, ModelConfig
from iarm_torchrec.models.ctr_train import CTRTrain
from iarm_torchrec.models.dcn import DCN, DCNConfig
from iarm_torchrec.models.deep_crossing import DeepCrossing, DeepCrossingConfig
from iarm_torchrec.models.deepfm import DeepFM, DeepFMConfig
from iarm_torchrec.models.fm import FM, FMConfig
from iarm_torchrec.models.field_model import FieldModel, FirstOrderModel
from iarm_torchrec.models.iarm import IARM, IARMConfig
from iarm_torchrec.models.nfm import NFM, NFMConfig
from iarm_torchrec.models.pnn import PNN, PNNConfig
from iarm_torchrec.models.wide_deep import WideAndDeep, WideAndDeepConfig

__all__ = [
    "AFM",
    "AFMConfig",
    "AutoInt",
    "AutoIntConfig",
    "CTRTrain",
    "DCN",
    "DCNConfig",
    "DeepCrossing",
    "DeepCrossingConfig",
    "DeepFM",
    "DeepFMConfig",
    "DeepModelConfig",
    "FM",
    "FieldModel",
    "FirstOrderModel",
    "FMConfig",
    "IARM",
    "IARMConfig",
    "ModelConfig",
    "NFM",
    "NFMConfig",
    "PNN",
    "PNNConfig",
    "WideAndDeep",
    "WideAndDeepConfig",
]
