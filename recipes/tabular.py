"""Recipe: IARM on your own table (CSV, TSV or Parquet described by a schema file), data parallel
over NNODES x NPROC_PER_NODE ranks.

A TorchX component on top of ``iarm.train`` (``components/iarm.py``)::

    torchx run -s local_cwd recipes/tabular.py:tabular --schema examples/criteo_x1/schema.yaml \\
        --nproc_per_node 2 --gpu 0 --batch_size 256

TorchX execs this file, so it imports the installed package (``components``), never a relative path.
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs

from components import iarm


def tabular(
    *trainer_args: str,
    schema: str = "schema.yaml",
    data_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
    out: str = "runs/tabular",
    resume: Optional[str] = "latest",
    nnodes: int = 1,
    nproc_per_node: int = 8,
    batch_size: int = 4096,
    epochs: int = 1,
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
    IARM on the table a schema file describes, data parallel on nnodes x nproc_per_node ranks.

    Other ``iarm train`` flags go after ``--``, e.g. ``-- --embedding-dim 16 --min-count 5``.

    Args:
        trainer_args: extra ``iarm train`` flags, appended last (so they win)
        schema: the schema file (YAML; iarm_torchrec/data/schema.py), as seen by every node
        data_dir: where the schema's relative file names start (default: the schema's folder)
        cache_dir: preprocessed-data cache (default: <data_dir or schema folder>/.iarm-cache)
        out: run folder (checkpoints, metrics.json), on storage shared by all nodes
        resume: ``latest``: continue from the newest checkpoint in ``out`` (fresh when there is none)
        nnodes: number of nodes
        nproc_per_node: ranks per node, one per GPU (2 for a CPU trial run)
        batch_size: GLOBAL batch size, split evenly over the nnodes x nproc_per_node ranks
        epochs: number of training epochs
        image: container image with iarm-torchrec installed (ignored by local_cwd)
        h: a registered named resource for each node (overrides cpu, gpu, memMB)
        cpu: CPUs per node
        gpu: GPUs per node (default: nproc_per_node)
        memMB: memory per node in MB
        max_retries: scheduler retries of the whole job (each resumes from the last checkpoint)
        env: environment variables for the ranks
        mounts: mounts into the containers, e.g. type=bind,src=/data,dst=/data,readonly
    """
    return iarm.train(
        *trainer_args,
        dataset="tabular",
        schema=schema,
        data_dir=data_dir,
        cache_dir=cache_dir,
        out=out,
        resume=resume,
        batch_size=batch_size,
        epochs=epochs,
        j=f"{nnodes}x{nproc_per_node}",
        image=image,
        name="iarm/tabular",
        h=h,
        cpu=cpu,
        gpu=nproc_per_node if gpu is None else gpu,
        memMB=memMB,
        max_retries=max_retries,
        env=env,
        mounts=mounts,
    )
