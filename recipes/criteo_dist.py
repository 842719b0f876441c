"""Recipe: IARM on Criteo, data parallel over NNODES x NPROC_PER_NODE GPUs (default 1 node x 8 GPUs).

A TorchX component with Criteo defaults on top of ``iarm.train`` (``components/iarm.py``)::

    torchx run -s kubernetes recipes/criteo_dist.py:criteo_dist --image REGISTRY/iarm:TAG --data_dir /data/criteo
    torchx run -s local_cwd recipes/criteo_dist.py:criteo_dist --nproc_per_node 2 --gpu 0 \\
        --data_dir ../shared/data/criteo-kaggle-10k --batch_size 1024

TorchX execs this file, so it imports the installed package (``components``), never a relative path.
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs

from components import iarm


def criteo_dist(
    *trainer_args: str,
    data_dir: str = "data/criteo",
    cache_dir: Optional[str] = None,
    out: str = "runs/criteo_dist",
    resume: Optional[str] = "latest",
    nnodes: int = 1,
    nproc_per_node: int = 8,
    batch_size: int = 8192,
    epochs: int = 1,
    lr: Optional[float] = None,
    sparse_lr: Optional[float] = None,
    checkpoint_every: Optional[int] = None,
    image: str = torchx.IMAGE,
    h: Optional[str] = None,
    cpu: int = 32,
    gpu: Optional[int] = None,
    memMB: int = 245760,
    max_retries: int = 3,
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
) -> specs.AppDef:
    """
    IARM on Criteo (Kaggle display advertising, train.txt), data parallel on nnodes x nproc_per_node ranks.

    Embedding tables are sharded over all ranks by the TorchRec planner; dense layers are replicated.
    Other ``iarm train`` flags go after ``--``, e.g. ``-- --embedding-dim 16 --min-count 10``.

    Args:
        trainer_args: extra ``iarm train`` flags, appended last (so they win)
        data_dir: Criteo's train.txt, a folder holding it, or a folder of Terabyte day_N files, as seen by every node
        cache_dir: preprocessed-data cache (default: <data_dir>/.iarm-cache; set it when data_dir is read-only)
        out: run folder (checkpoints, metrics.json), on storage shared by all nodes
        resume: ``latest``: continue from the newest checkpoint in ``out`` (fresh when there is none), so
            retries resume (a new run needs a new ``out``); or a checkpoint folder
        nnodes: number of nodes
        nproc_per_node: ranks per node, one per GPU (2 for a CPU trial run)
        batch_size: GLOBAL batch size, split evenly over the nnodes x nproc_per_node ranks
        epochs: number of training epochs
        lr: learning rate of the dense optimizer (default: the trainer's)
        sparse_lr: learning rate of the fused embedding optimizer (default: the trainer's)
        checkpoint_every: write a checkpoint every this many steps (default: the trainer's)
        image: container image with iarm-torchrec installed (ignored by local_cwd)
        h: a registered named resource for each node, e.g. aws_p4d.24xlarge (overrides cpu, gpu, memMB)
        cpu: CPUs per node
        gpu: GPUs per node (default: nproc_per_node; 0 for CPU-only nodes)
        memMB: memory per node in MB
        max_retries: scheduler retries of the whole job; each resumes from the last checkpoint in ``out``
        env: environment variables for the ranks, e.g. NCCL_DEBUG=INFO
        mounts: mounts into the containers, e.g. type=bind,src=/data,dst=/data,readonly
    """
    return iarm.train(
        *trainer_args,
        dataset="criteo",
        data_dir=data_dir,
        cache_dir=cache_dir,
        out=out,
        resume=resume,
        batch_size=batch_size,
        epochs=epochs,
        lr=lr,
        sparse_lr=sparse_lr,
        checkpoint_every=checkpoint_every,
        j=f"{nnodes}x{nproc_per_node}",
        image=image,
        name="iarm/criteo_dist",
        h=h,
        cpu=cpu,
        gpu=nproc_per_node if gpu is None else int(gpu),
        memMB=memMB,
        env=env,
        max_retries=max_retries,
        mounts=mounts,
    )
