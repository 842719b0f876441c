"""Recipe: the paper's studies (``iarm experiment``) as one TorchX job.

``iarm experiment`` is one driver process that trains its runs one after another (each a
one-rank ``iarm train`` in the same process), so this is a single ``python -m
iarm_torchrec.experiments`` replica, built with TorchX's ``utils.python`` component rather than
the ``torchrun`` of ``iarm.train`` (``components/iarm.py``). With ``max_retries`` a retried job
repeats the command, which reuses every finished run and continues a cut-off one from its
newest checkpoint::

    torchx run -s local_cwd recipes/paper.py:paper --data_dir ../shared/data/movielens-1m \\
        --cache_dir runs/cache --out runs/paper-ml1m --epochs 1

TorchX execs this file, so it imports only installed packages, never a relative path.

Example::

    >>> app = paper(data_dir="/data/ml-1m", out="/runs/p", epochs=1, env={"OMP_NUM_THREADS": "4"})
    >>> role = app.roles[0]
    >>> role.args[:2], role.env["OMP_NUM_THREADS"]
    (['-m', 'iarm_torchrec.experiments'], '4')
    >>> " ".join(role.args[2:])
    '--preset table2,ablation,layers,attention --dataset movielens-1m --data-dir /data/ml-1m --out /runs/p --seeds 0,1,2 --field-set paper --test-ratio 0.2 --valid-ratio 0.1 --epochs 1'
"""

from typing import Dict, List, Optional

import torchx
from torchx import specs
from torchx.components import utils


def paper(
    *experiment_args: str,
    preset: str = "table2,ablation,layers,attention",
    dataset: str = "movielens-1m",
    data_dir: str = "data/movielens-1m",
    cache_dir: Optional[str] = None,
    out: str = "runs/paper",
    seeds: str = "0,1,2",
    models: Optional[str] = None,
    model_config: Optional[str] = None,
    field_set: Optional[str] = "paper",
    test_ratio: Optional[float] = 0.2,
    valid_ratio: Optional[float] = 0.1,
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
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
    The paper's studies on one node: every run of the presets, then the Markdown report and plots in ``out``.

    Other ``iarm experiment`` flags go after ``--``, e.g. ``-- --max-steps-per-epoch 100``.

    Args:
        experiment_args: extra ``iarm experiment`` flags, appended last (so they win)
        preset: comma-separated studies: table2, ablation, layers, split, attention
        dataset: synthetic, criteo, avazu or movielens-1m
        data_dir: the raw data's file or folder, as the job sees it
        cache_dir: preprocessed-data cache (default: <data_dir>/.iarm-cache; set it when data_dir is read-only)
        out: the study folder (runs/, report.md, plots/); finished runs in it are reused
        seeds: comma-separated seeds; every run is repeated once per seed (mean and std reported)
        models: comma-separated models of table2/split (default: all ten of Table 2)
        model_config: each model's own settings, JSON keyed by model, e.g. '{"dcn": {"num_cross_layers": 2}}'
        field_set: movielens-1m field set (paper or ids); ignored for the other datasets
        test_ratio: test share (the paper's Table 2 uses 0.2; the split preset sets its own)
        valid_ratio: validation share, which picks each run's best epoch
        epochs: epochs of every run (default: the trainer's, with early stopping)
        batch_size: batch size of every run
        lr: dense learning rate of every run
        sparse_lr: embedding learning rate of every run
        image: container image with iarm-torchrec installed (ignored by local_cwd)
        h: a registered named resource (overrides cpu, gpu, memMB)
        cpu: CPUs
        gpu: GPUs (each run uses one)
        memMB: memory in MB
        max_retries: scheduler retries; each repeats the command, which resumes the study
        env: environment variables, e.g. OMP_NUM_THREADS=4
        mounts: mounts into the container, e.g. type=bind,src=/data,dst=/data,readonly
    """
    flags = {
        "--preset": preset,
        "--dataset": dataset,
        "--data-dir": data_dir,
        "--cache-dir": cache_dir,
        "--out": out,
        "--seeds": seeds,
        "--models": models,
        "--model-config": model_config,
        "--field-set": field_set if dataset == "movielens-1m" else None,
        "--test-ratio": test_ratio,
        "--valid-ratio": valid_ratio,
        "--epochs": epochs,
        "--batch-size": batch_size,
        "--lr": lr,
        "--sparse-lr": sparse_lr,
    }
    args = [item for flag, value in flags.items() if value is not None for item in (flag, str(value))]
    app = utils.python(
        *args, *experiment_args, m="iarm_torchrec.experiments", image=image, name="iarm-paper", cpu=cpu, gpu=gpu,
        memMB=memMB, h=h,
    )
    role = app.roles[0]
    role.env.update(env or {})
    role.max_retries = max_retries
    role.mounts = specs.parse_mounts(mounts) if mounts else []
    return app
