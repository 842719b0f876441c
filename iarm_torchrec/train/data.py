"""Training's side of the data cache: a run's settings -> the :class:`~iarm_torchrec.data.cache.DataSource`
to preprocess, and the preprocessed folder for this rank (:func:`iarm_torchrec.data.cache.prepare_data`)."""

from pathlib import Path

from iarm_torchrec.data import cache
from iarm_torchrec.data.cache import DataSource
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.settings import TrainSettings


def data_source(settings: TrainSettings) -> DataSource:
    """What ``settings`` preprocess: dataset, raw source, cache root, options, synthetic rows."""
    return DataSource(
        dataset=settings.dataset,
        data_dir=settings.data_dir,
        cache_root=settings.cache_root,
        options=settings.preprocess_options(),
        synthetic_rows=settings.synthetic_rows,
    )


def prepare_data(settings: TrainSettings, env: DistEnv) -> Path:
    """The preprocessed folder of ``settings``' dataset, made by rank 0 when not cached yet."""
    return cache.prepare_data(data_source(settings), env.is_main, env.barrier)
