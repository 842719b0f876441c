"""Distributed training: settings, sharding, the training loop, evaluation, checkpoints."""

from iarm_torchrec.train.settings import TrainSettings

__all__ = ["TrainSettings"]
