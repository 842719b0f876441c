"""The paper's own figures (test AUC and log loss), to print beside ours.

Transcribed from the paper's Tables 2-6; the keys are our dataset names and the row labels
of :mod:`iarm_torchrec.experiments.presets`. Fig. 4 (AUC against interacting layers) and
Fig. 5 (attention map) are drawn without numbers, so there is nothing to transcribe; the
text says of Fig. 5 that *sex* and *age* attend to each other most.

Example::

    >>> paper_figure("table2", "movielens-1m", "IARM")
    (0.8386, 0.3296)
    >>> paper_figure("split", "criteo", "DeepFM", group="0.3")
    (0.7249, 0.4792)
    >>> paper_figure("table2", "synthetic", "IARM") is None
    True
"""

from typing import Dict, Optional, Tuple

Figure = Tuple[float, float]
"""``(AUC, LOSS)`` as printed in the paper."""

# Table 2: model -> dataset -> (AUC, LOSS)
_TABLE2: Dict[str, Dict[str, Figure]] = {
    "FM": {"criteo": (0.6869, 0.5286), "movielens-1m": (0.5347, 0.4462), "avazu": (0.5437, 0.6221)},
    "Wide&Deep": {"criteo": (0.7066, 0.4827), "movielens-1m": (0.8328, 0.3334), "avazu": (0.7424, 0.4117)},
    "DeepFM": {"criteo": (0.7283, 0.4707), "movielens-1m": (0.8340, 0.3346), "avazu": (0.7461, 0.4041)},
    "AFM": {"criteo": (0.7220, 0.4754), "movielens-1m": (0.8295, 0.3358), "avazu": (0.7567, 0.4012)},
    "DCN": {"criteo": (0.7094, 0.4920), "movielens-1m": (0.8249, 0.3393), "avazu": (0.7349, 0.4139)},
    "NFM": {"criteo": (0.7027, 0.5645), "movielens-1m": (0.8297, 0.3357), "avazu": (0.7400, 0.4179)},
    "PNN": {"criteo": (0.7084, 0.4870), "movielens-1m": (0.8312, 0.3353), "avazu": (0.7374, 0.4096)},
    "AutoInt": {"criteo": (0.7060, 0.6049), "movielens-1m": (0.8362, 0.3393), "avazu": (0.7450, 0.4496)},
    "Deep Crossing": {"criteo": (0.7375, 0.4732), "movielens-1m": (0.8373, 0.3305), "avazu": (0.7572, 0.3989)},
    "IARM": {"criteo": (0.7545, 0.4830), "movielens-1m": (0.8386, 0.3296), "avazu": (0.7652, 0.3994)},
}

# Tables 3 (IARM*), 4 (IRM) and 5 (IARM-); IARM's row is Table 2's.
_ABLATION: Dict[str, Dict[str, Figure]] = {
    "IARM": _TABLE2["IARM"],
    "IARM*": {"criteo": (0.7371, 0.4965), "avazu": (0.7591, 0.3995), "movielens-1m": (0.8349, 0.3344)},
    "IRM": {"criteo": (0.7497, 0.4902), "avazu": (0.7637, 0.4019), "movielens-1m": (0.8345, 0.3292)},
    "IARM-": {"criteo": (0.7511, 0.4822), "avazu": (0.7621, 0.4086), "movielens-1m": (0.8236, 0.3422)},
}

# Table 6 (Criteo only): test ratio -> model -> (AUC, LOSS); the 0.2 column is Table 2's.
_SPLIT: Dict[str, Dict[str, Figure]] = {
    "0.2": {model: figures["criteo"] for model, figures in _TABLE2.items()},
    "0.3": {
        "FM": (0.6785, 0.5368),
        "Wide&Deep": (0.7007, 0.4846),
        "DeepFM": (0.7249, 0.4792),
        "AFM": (0.7084, 0.4877),
        "DCN": (0.7042, 0.5010),
        "NFM": (0.7005, 0.5654),
        "PNN": (0.7013, 0.4979),
        "AutoInt": (0.6921, 0.6552),
        "Deep Crossing": (0.7356, 0.4792),
        "IARM": (0.7527, 0.4993),
    },
}

PAPER_TEST_RATIO = 0.2
"""The test share behind Table 2 (Table 6's 0.2 column repeats Table 2's Criteo figures)."""


def paper_figure(preset: str, dataset: str, label: str, group: Optional[str] = None) -> Optional[Figure]:
    """The paper's ``(AUC, LOSS)`` for row ``label`` of ``preset`` on ``dataset``, or ``None``
    where the paper prints none (other datasets, Fig. 4's layer counts)."""
    if preset in ("table2", "attention"):
        return _TABLE2.get(label, {}).get(dataset)
    if preset == "ablation":
        return _ABLATION.get(label, {}).get(dataset)
    if preset == "split" and dataset == "criteo" and group is not None:
        return _SPLIT.get(group, {}).get(label)
    return None
