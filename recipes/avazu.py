"""Recipe: IARM on Avazu, data parallel over NNODES x NPROC_PER_NODE GPUs (default 1 node x 8 GPUs).

A TorchX component with Avazu defaults on top of ``iarm.train`` (``components/iarm.py``)::

    torchx run -s local_cwd recipes/avazu.py:avazu --nproc_per_node 2 --gpu 0 \\
        --data_dir ../shared/data/avazu-sample --batch_size 32

TorchX execs this file, so it imports the installed package (``components``), never a relative path.
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs

from components import iarm


def avazu(
    *trainer_args: str,
    data_dir: str = "data/avazu",
    cache_dir: Optional[str] = None,
    out: str = "runs/avazu",
    resume: Optional[str] = "latest",
    nnodes: int = 1,
    nproc_per_node: int = 8,
    batch_size: int = 8192,
    epochs: int = 1,
    lr: Optional[float] = None,
    sparse_lr: Optional[float] = None,
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
    IARM on Avazu (Kaggle CTR prediction, train.csv), data parallel on nnodes x nproc_per_node ranks.

    Other ``iarm train`` flags go after ``--``, e.g. ``-- --embedding-dim 16 --min-count 5``.

    Args:
        trainer_args: extra ``iarm train`` flags, appended last (so they win)
        data_dir: Avazu's train.csv or a folder holding it, as seen by every node
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
        dataset="avazu",
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
        name="iarm/avazu",
        h=h,
        cpu=cpu,
        gpu=nproc_per_node if gpu is None else int(gpu),
        memMB=memMB,
        env=env,
        max_retries=max_retries,
        mounts=mounts,
    )
