"""The ``iarm.*`` TorchX components: AppDefs that launch ``python -m iarm_torchrec.train``.

Every public function in this module is a TorchX component (TorchX lists all of them), so the
module holds components only. Recipes (``recipes/*.py``) call :func:`train` with their own defaults.

Example::

    >>> app = train("--early-stopping-patience", "2", dataset="synthetic", j="1x2", out="runs/x")
    >>> app.roles[0].entrypoint
    'bash'
    >>> cmd = app.roles[0].args[1]
    >>> cmd.startswith("torchrun") and "--nproc_per_node 2" in cmd
    True
    >>> cmd.split(" -m ", 1)[1]
    'iarm_torchrec.train --dataset synthetic --out runs/x --early-stopping-patience 2'
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import dist


def train(
    *trainer_args: str,
    dataset: str = "synthetic",
    data_dir: Optional[str] = None,
    schema: Optional[str] = None,
    cache_dir: Optional[str] = None,
    out: str = "runs/iarm",
    resume: Optional[str] = None,
    config: Optional[str] = None,
    model: Optional[str] = None,
    model_config: Optional[str] = None,
    batch_size: Optional[int] = None,
    epochs: Optional[int] = None,
    lr: Optional[float] = None,
    sparse_optimizer: Optional[str] = None,
    sparse_lr: Optional[float] = None,
    checkpoint_every: Optional[int] = None,
    seed: Optional[int] = None,
    j: str = "1x2",
    image: str = torchx.IMAGE,
    name: str = "iarm/",
    h: Optional[str] = None,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 4096,
    env: Optional[Dict[str, str]] = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
    rdzv_backend: str = "c10d",
    mounts: Optional[List[str]] = None,
    debug: bool = False,
    tee: int = 3,
) -> specs.AppDef:
    """
    Distributed IARM training: ``torchrun -m iarm_torchrec.train`` on NNODES x NPROC ranks.

    Wraps ``dist.ddp``: one role, ``j`` = NNODESxNPROC_PER_NODE ranks, c10d rendezvous,
    a scheduler retry restarts the whole job (from the last checkpoint in ``out`` with resume=latest).
    Trainer options left unset (None) keep the trainer's defaults (or those of ``config``);
    any other trainer flag goes after ``--``, e.g. ``-- --embedding-dim 16 --no-attention``.

    Args:
        trainer_args: extra ``iarm train`` flags, appended last (so they win), e.g. ``--num-layers 3``
        dataset: synthetic, criteo, avazu, movielens-1m or tabular
        data_dir: the raw data set's file or folder, as seen by every node (synthetic: where it is generated)
        schema: tabular: the schema file (YAML) describing the table, as seen by every node
        cache_dir: preprocessed-data cache (default: <data_dir>/.iarm-cache; set it when data_dir is read-only)
        out: run folder (checkpoints, metrics.json), on storage shared by all nodes
        resume: ``latest`` continues from the newest complete checkpoint in ``out`` (a fresh start when
            there is none), or a checkpoint folder; use ``latest`` with max_retries so that a retry resumes
        config: a trainer config file (JSON) whose values the other flags override
        model: model name from the model registry (default: the trainer's, IARM)
        model_config: the model's own settings as JSON or a JSON file, e.g. '{"num_cross_layers": 2}' for dcn
        batch_size: GLOBAL batch size, split evenly over all ranks
        epochs: number of training epochs
        lr: learning rate of the dense optimizer
        sparse_optimizer: fused optimizer of the embedding tables: adam, rowwise_adagrad, adagrad or sgd
        sparse_lr: learning rate of the sparse (embedding) optimizer
        checkpoint_every: write a checkpoint every this many training steps
        seed: random seed (data order, initialisation)
        j: [{min_nnodes}:]{nnodes}x{nproc_per_node}; on GPU hosts nproc_per_node must not exceed the GPUs per node
        image: container image with iarm-torchrec installed (ignored by local_cwd, which runs in the CWD)
        name: job name, ``{experimentname}/{runname}`` or ``{experimentname}/`` or ``/{runname}`` or ``{runname}``
        h: a registered named resource, e.g. aws_p4d.24xlarge (takes precedence over cpu, gpu, memMB)
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        env: environment variables for the ranks, e.g. NCCL_DEBUG=INFO,OMP_NUM_THREADS=4
        max_retries: number of scheduler retries of the whole job (they resume only with resume=latest)
        rdzv_port: port on rank 0's host for the c10d rendezvous store (multi-node only)
        rdzv_backend: rendezvous backend (multi-node only)
        mounts: mounts into the containers, e.g. type=bind,src=/data,dst=/data,readonly
        debug: turn on the PyTorch/NCCL debug environment flags
        tee: tee the ranks' streams to the console and files: 0 none, 1 stdout, 2 stderr, 3 both
    """
    flags = {
        "--dataset": dataset,
        "--data-dir": data_dir,
        "--schema": schema,
        "--cache-dir": cache_dir,
        "--out": out,
        "--resume": resume,
        "--config": config,
        "--model": model,
        "--model-config": model_config,
        "--batch-size": batch_size,
        "--epochs": epochs,
        "--lr": lr,
        "--sparse-optimizer": sparse_optimizer,
        "--sparse-lr": sparse_lr,
        "--checkpoint-every": checkpoint_every,
        "--seed": seed,
    }
    args = [item for flag, value in flags.items() if value is not None for item in (flag, str(value))]
    return dist.ddp(
        *args,
        *trainer_args,
        m="iarm_torchrec.train",
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        rdzv_backend=rdzv_backend,
        mounts=mounts,
        debug=debug,
        tee=tee,
    )
