"""TorchX components and recipes render the torchrun jobs they promise (no job is started here)."""

import ast
import doctest
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, List

import pytest
from torchx import specs
from torchx.specs.file_linter import get_fn_docstring
from torchx.specs.finder import get_component

import components.iarm
from components import iarm
from iarm_torchrec.train.settings import TrainSettings

REPO = Path(__file__).resolve().parents[1]
TORCHX = Path(sys.executable).parent / "torchx"
RECIPES = {"criteo_dist": "criteo", "avazu": "avazu", "movielens": "movielens-1m"}


def load_recipe(name: str) -> Callable[..., specs.AppDef]:
    """The recipe function, from its file exec'd the way `torchx run FILE:FN` does."""
    path = REPO / "recipes" / f"{name}.py"
    namespace: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return namespace[name]


def torchrun_command(app: specs.AppDef) -> List[str]:
    """The one role's `bash -c "torchrun ..."` command, split into words."""
    (role,) = app.roles
    assert role.entrypoint == "bash" and role.args[0] == "-c"
    return shlex.split(role.args[1])


def option(words: List[str], name: str) -> str:
    return words[words.index(name) + 1]


def trainer_args(words: List[str]) -> List[str]:
    """What follows `-m iarm_torchrec.train`."""
    at = words.index("-m")
    assert words[at + 1] == "iarm_torchrec.train"
    return words[at + 2 :]


def test_train_renders_multinode_torchrun_with_trainer_flags() -> None:
    app = iarm.train(
        "--num-layers", "3", "--no-residual",
        dataset="criteo", data_dir="/data/criteo", cache_dir="/scratch/c", out="/runs/a", resume="latest",
        batch_size=4096, lr=0.001, model="iarm", model_config='{"num_heads": 4}',
        sparse_optimizer="rowwise_adagrad", j="2x4", gpu=4, cpu=16, memMB=65536, max_retries=3,
    )  # fmt: skip
    words = torchrun_command(app)
    (role,) = app.roles
    assert words[0] == "torchrun"
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("2", "4")
    assert option(words, "--rdzv_backend") == "c10d"
    # multi-node: the c10d store lives on rank 0's host, which each scheduler fills in for the macro
    assert option(words, "--rdzv_endpoint") == f"$${{{specs.macros.rank0_env}:=localhost}}:29500"
    assert (role.num_replicas, role.min_replicas, role.max_retries) == (2, 2, 3)
    assert (role.resource.cpu, role.resource.gpu, role.resource.memMB) == (16, 4, 65536)
    assert role.port_map == {"c10d": 29500}
    # unset trainer options are left to the trainer; extra flags come last so they win
    assert trainer_args(words) == [
        "--dataset", "criteo", "--data-dir", "/data/criteo", "--cache-dir", "/scratch/c", "--out", "/runs/a",
        "--resume", "latest", "--model", "iarm", "--model-config", '{"num_heads": 4}', "--batch-size", "4096",
        "--lr", "0.001", "--sparse-optimizer", "rowwise_adagrad", "--num-layers", "3", "--no-residual",
    ]  # fmt: skip
    # what the ranks run parses into the model's settings
    settings = TrainSettings.from_args(trainer_args(words))
    assert (settings.model_config["num_heads"], settings.model_config["use_residual"]) == (4, False)


def test_train_single_node_defaults() -> None:
    app = iarm.train()
    words = torchrun_command(app)
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("1", "2")
    # one node: torchelastic picks a free port itself
    assert option(words, "--rdzv_endpoint") == "localhost:0"
    assert trainer_args(words) == ["--dataset", "synthetic", "--out", "runs/iarm"]
    assert app.roles[0].max_retries == 0
    assert app.roles[0].env["TORCHX_TRACKING_EXPERIMENT_NAME"] == "iarm"


def test_train_named_resource_overrides_cpu_gpu_mem() -> None:
    app = iarm.train(h="aws_p4d.24xlarge", gpu=1)
    assert app.roles[0].resource == specs.named_resources["aws_p4d.24xlarge"]
    assert app.roles[0].resource.gpu == 8


@pytest.mark.parametrize("recipe,dataset", RECIPES.items())
def test_recipe_passes_its_dataset_and_rank_layout(recipe: str, dataset: str) -> None:
    fn = load_recipe(recipe)
    words = torchrun_command(fn("--embedding-dim", "8", nnodes=2, nproc_per_node=3, data_dir="/d", out="/o"))
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("2", "3")
    passed = trainer_args(words)
    assert passed[:6] == ["--dataset", dataset, "--data-dir", "/d", "--out", "/o"]
    assert passed[-2:] == ["--embedding-dim", "8"]


def test_criteo_dist_defaults_one_node_of_eight_gpus() -> None:
    app = load_recipe("criteo_dist")()
    words = torchrun_command(app)
    (role,) = app.roles
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("1", "8")
    assert role.resource.gpu == 8 and role.max_retries == 3 and app.name == "criteo_dist"
    assert option(trainer_args(words), "--batch-size") == "8192"
    assert option(trainer_args(words), "--resume") == "latest"  # so that the 3 retries resume
    # a CPU trial: fewer ranks, no GPUs
    cpu_role = load_recipe("criteo_dist")(nproc_per_node=2, gpu=0).roles[0]
    assert cpu_role.resource.gpu == 0


def every_component() -> List[Callable[..., specs.AppDef]]:
    return [iarm.train] + [load_recipe(name) for name in RECIPES]


@pytest.mark.parametrize("fn", every_component(), ids=lambda fn: fn.__name__)
def test_every_argument_is_documented_for_help(fn: Callable[..., specs.AppDef]) -> None:
    _, described = get_fn_docstring(fn)
    undocumented = [name for name, text in described.items() if not text.strip()]
    assert undocumented == []
    assert set(described) == set(inspect.signature(fn).parameters)


def test_entry_point_registers_iarm_train_and_keeps_builtins() -> None:
    assert get_component("iarm.train").validation_errors == []
    assert get_component("iarm.train").fn is iarm.train
    assert get_component("dist.ddp").validation_errors == []


def test_module_doctest() -> None:
    module: ModuleType = components.iarm
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0


def dryrun(*args: str) -> str:
    """`torchx run --dryrun ...` from the repository root (so .torchxconfig applies): its output."""
    done = subprocess.run(
        [str(TORCHX), "run", "--dryrun", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def rendered_command(output: str) -> List[str]:
    """The torchrun command the scheduler would run, from the dryrun's SCHEDULER REQUEST print-out."""
    request = output.split("=== SCHEDULER REQUEST ===")[1]
    found = re.search(r"'args': (\[.*?\])", request, flags=re.S)
    assert found, request
    args = ast.literal_eval(found.group(1))  # pprint splits long strings into adjacent literals
    assert args[:2] == ["bash", "-c"]
    return shlex.split(args[2])


def test_cli_dryrun_criteo_dist_recipe() -> None:
    words = rendered_command(
        dryrun(
            "-s", "local_cwd", "recipes/criteo_dist.py:criteo_dist", "--nproc_per_node", "2", "--gpu", "0",
            "--data_dir", "../shared/data/criteo-kaggle-10k", "--batch_size", "256", "--", "--embedding-dim", "8",
        )
    )  # fmt: skip
    assert words[0] == "torchrun"
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("1", "2")
    assert trainer_args(words) == [
        "--dataset", "criteo", "--data-dir", "../shared/data/criteo-kaggle-10k", "--out", "runs/criteo_dist",
        "--resume", "latest", "--batch-size", "256", "--epochs", "1", "--embedding-dim", "8",
    ]  # fmt: skip


def test_cli_dryrun_entry_point_component() -> None:
    words = rendered_command(
        dryrun("-s", "local_cwd", "iarm.train", "-j", "1x2", "--epochs", "2", "--max_retries", "1", "--", "--no-attention")
    )
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("1", "2")
    assert trainer_args(words) == ["--dataset", "synthetic", "--out", "runs/iarm", "--epochs", "2", "--no-attention"]


def test_torchxconfig_makes_bare_run_the_local_synthetic_job() -> None:
    output = dryrun()
    words = rendered_command(output)
    assert (option(words, "--nnodes"), option(words, "--nproc_per_node")) == ("1", "2")
    assert trainer_args(words) == ["--dataset", "synthetic", "--out", "runs/iarm"]
    assert "'log_dir': 'runs/torchx/" in output  # [local_cwd] section of .torchxconfig


@pytest.mark.slow
def test_local_cwd_two_rank_synthetic_job_trains_and_reports_bayes_optimal_auc(tmp_path: Path) -> None:
    """The README's job, made small: `torchx run -s local_cwd iarm.train` really trains on 2 ranks."""
    out, cache, logs = tmp_path / "run", tmp_path / "cache", tmp_path / "logs"
    done = subprocess.run(
        [
            str(TORCHX), "run", "-s", "local_cwd", "--scheduler_args", f"log_dir={logs}",
            "iarm.train", "-j", "1x2", "--out", str(out), "--cache_dir", str(cache), "--batch_size", "256",
            "--epochs", "2", "--", "--synthetic-rows", "10000",
        ],
        cwd=REPO,
        env={**os.environ, "PATH": f"{TORCHX.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Bayes-optimal test AUC" in done.stdout + done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["dataset"] == "synthetic"
    # 62 steps reach ~0.72 (1,000 test rows: standard error ~0.02); the planted optimum is ~0.84
    assert 0.6 < metrics["test_auc"] < metrics["bayes_optimal_test_auc"] < 1.0
