"""Recipe: IARM on MovieLens-1M (the paper's protocol: rating > 3 click, < 3 no click, 3 dropped).

A TorchX component with MovieLens-1M defaults on top of ``iarm.train`` (``components/iarm.py``).
The data set is small (739,012 samples), so the default is one node of 2 CPU ranks::

    torchx run -s local_cwd recipes/movielens.py:movielens --data_dir ../shared/data/movielens-1m

TorchX execs this file, so it imports the installed package (``components``), never a relative path.
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs

from components import iarm


def movielens(
    *trainer_args: str,
    data_dir: str = "data/movielens-1m",
    cache_dir: Optional[str] = None,
    out: str = "runs/movielens",
    resume: Optional[str] = None,
    nnodes: int = 1,
    nproc_per_node: int = 2,
    batch_size: int = 1024,
    epochs: Optional[int] = None,
    lr: Optional[float] = None,
    sparse_lr: Optional[float] = None,
    image: str = torchx.IMAGE,
    h: Optional[str] = None,
    cpu: int = 4,
    gpu: int = 0,
    memMB: int = 16384,
    max_retries: int = 0,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """
    IARM on MovieLens-1M (users.dat, movies.dat, ratings.dat), data parallel on nnodes x nproc_per_node ranks.

    Other ``iarm train`` flags go after ``--``, e.g. ``-- --embedding-dim 16 --no-interest``.

    Args:
        trainer_args: extra ``iarm train`` flags, appended last (so they win)
        data_dir: folder holding the GroupLens ml-1m files, as seen by every node
        cache_dir: preprocessed-data cache (default: <data_dir>/.iarm-cache; set it when data_dir is read-only)
        out: run folder (checkpoints, metrics.json), on storage shared by all nodes
        resume: ``latest`` to continue from the newest checkpoint in ``out``, or a checkpoint folder
        nnodes: number of nodes
        nproc_per_node: ranks per node (one per GPU when gpu > 0)
        batch_size: GLOBAL batch size, split evenly over the nnodes x nproc_per_node ranks
        epochs: number of training epochs (default: the trainer's, with early stopping)
        lr: learning rate of the dense optimizer (default: the trainer's)
        sparse_lr: learning rate of the fused embedding optimizer (default: the trainer's)
        image: container image with iarm-torchrec installed (ignored by local_cwd)
        h: a registered named resource for each node (overrides cpu, gpu, memMB)
        cpu: CPUs per node
        gpu: GPUs per node (MovieLens-1M trains in minutes on CPUs)
        memMB: memory per node in MB
        max_retries: scheduler retries of the whole job; each resumes from the last checkpoint in ``out``
        env: environment variables for the ranks, e.g. OMP_NUM_THREADS=2
        mounts: mounts into the containers, e.g. type=bind,src=/data,dst=/data,readonly
    """
    return iarm.train(
        *trainer_args,
        dataset="movielens-1m",
        data_dir=data_dir,
        cache_dir=cache_dir,
        out=out,
        resume=resume,
        batch_size=batch_size,
        epochs=epochs,
        lr=lr,
        sparse_lr=sparse_lr,
        j=f"{nnodes}x{nproc_per_node}",
        image=image,
        name="iarm/movielens",
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        env=env,
        max_retries=max_retries,
        mounts=mounts,
    )
