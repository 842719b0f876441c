"""The files of a run folder (``iarm train --out RUN``), named once for the trainer, export and tests.

::

    RUN/settings.json     the effective TrainSettings
    RUN/model.json        the model config (registry.model_config_dict)
    RUN/spec.json         the feature spec of the data it trained on
    RUN/run.json          where that data lives (the preprocessed folder, absolute)
    RUN/checkpoints/      step-SSSSSSSS sharded checkpoints
    RUN/metrics.json      per-epoch and final metrics (test_auc, test_logloss, ...)
    RUN/summary.txt       the same, readable
    RUN/tensorboard/      TensorBoard logs (when tensorboard is installed)
"""

from iarm_torchrec.train.settings import SETTINGS_FILE

MODEL_FILE = "model.json"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.txt"
CHECKPOINT_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"

__all__ = ["SETTINGS_FILE", "MODEL_FILE", "RUN_FILE", "METRICS_FILE", "SUMMARY_FILE", "CHECKPOINT_DIR", "TENSORBOARD_DIR"]
