"""The preprocessed data of a run: made once by rank 0, cached, found again by every rerun.

The cache folder's name carries a hash of what the data depends on (dataset, source,
preprocessing options), so a rerun with the same settings skips preprocessing and a change
of options makes a new folder. Rank 0 preprocesses into a temporary folder and renames it
when complete; the other ranks wait for the folder (on storage all ranks share), so nobody
reads half-written data.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from iarm_torchrec.data.loader import ShardedBatchLoader
from iarm_torchrec.data.preprocess import preprocess
from iarm_torchrec.data.spec import SPEC_FILE
from iarm_torchrec.data.synthetic import GROUND_TRUTH_FILE, make_synthetic_dataset
from iarm_torchrec.train.distributed import DistEnv
from iarm_torchrec.train.settings import TrainSettings

logger = logging.getLogger(__name__)

_POLL_S = 2.0
SYNTHETIC_SEED = 0
"""The synthetic dataset's own seed: runs with different ``--seed`` see the same data."""


def cache_key(settings: TrainSettings) -> Dict[str, Any]:
    """What the preprocessed data depends on."""
    if settings.dataset == "synthetic":
        return {"dataset": "synthetic", "rows": settings.synthetic_rows, "seed": SYNTHETIC_SEED}
    return {
        "dataset": settings.dataset,
        "source": str(Path(settings.data_dir or "").resolve()),
        "options": settings.preprocess_options(),
    }


def cache_dir(settings: TrainSettings) -> Path:
    key = json.dumps(cache_key(settings), sort_keys=True)
    return settings.cache_root / f"{settings.dataset}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def prepare_data(settings: TrainSettings, env: DistEnv) -> Path:
    """The preprocessed folder (holding ``spec.json``) of ``settings``' dataset, made by rank 0
    when it is not cached yet."""
    target = cache_dir(settings)
    if env.is_main:
        if not (target / SPEC_FILE).is_file():
            _build(settings, target)
    else:
        # preprocessing a large dataset outlasts a collective's timeout: wait on the folder
        # (if rank 0 fails, the launcher stops this rank)
        waited = 0.0
        while not (target / SPEC_FILE).is_file():
            time.sleep(_POLL_S)
            waited += _POLL_S
            if waited % 300 < _POLL_S:
                logger.warning("rank %d: still waiting for rank 0 to preprocess into %s", env.rank, target)
    env.barrier()
    return target


def ground_truth_file(data_dir: Path) -> Optional[Path]:
    """The synthetic dataset's ``ground_truth.json`` (Bayes-optimal scores), when there is one."""
    path = data_dir / GROUND_TRUTH_FILE
    return path if path.is_file() else None


def _build(settings: TrainSettings, target: Path) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    logger.info("preprocessing %s into %s", settings.dataset, target)
    if settings.dataset == "synthetic":
        make_synthetic_dataset(tmp, rows=settings.synthetic_rows, seed=SYNTHETIC_SEED)
    else:
        preprocess(settings.dataset, settings.data_dir, tmp, **settings.preprocess_options())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


class GlobalBatchLoader(ShardedBatchLoader):
    """A training loader whose step ``k`` is the same GLOBAL batch for any number of ranks.

    :class:`ShardedBatchLoader` gives each rank a contiguous slice of the epoch's order, so
    the samples that meet in one step depend on the world size. Here step ``k`` takes samples
    ``[k B, (k + 1) B)`` of the epoch's order (``B = world_size * batch_size``) and rank
    ``r`` its ``r``-th sub-batch: 1 rank or N ranks train on the same global batches, and
    gradients averaged over ranks equal those of the one big batch. Evaluation loaders
    (``drop_last=False``) keep the parent's layout.

    Example::

        >>> import tempfile, numpy as np
        >>> from iarm_torchrec.data.spec import FeatureSpec, SparseFieldSpec
        >>> d = Path(tempfile.mkdtemp()); part = d / "train" / "part-00000"; part.mkdir(parents=True)
        >>> _ = FeatureSpec("toy", [SparseFieldSpec("item", 9)]).save(d)
        >>> np.save(part / "labels.npy", np.zeros(9, np.float32)); np.save(part / "dense.npy", np.zeros((9, 0), np.float32))
        >>> np.save(part / "sparse.npy", np.arange(9, dtype=np.int32)[:, None])
        >>> [GlobalBatchLoader(d, "train", 2, rank=r, world_size=2).rank_rows(0).tolist() for r in (0, 1)]
        [[0, 1, 4, 5], [2, 3, 6, 7]]
    """

    def rank_rows(self, epoch: int) -> np.ndarray:
        if not self.drop_last:
            return super().rank_rows(epoch)
        n, b, w = len(self.data), self.batch_size, self.world_size
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return order[: len(self) * w * b].reshape(len(self), w, b)[:, self.rank, :].reshape(-1)
