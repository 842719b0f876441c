"""Shared by the trainer tests: small synthetic runs, launched in subprocesses (1 process, or 2
ranks under torchrun), their metrics read back from the run folder.

Every run trains the same small IARM on the same synthetic data (cached once per test session
under one data folder), so runs differ only in what a test varies: world size, a killed rank,
a resume. A run folder already holding ``metrics.json`` is reused, so test modules can share
an expensive run.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from dist_utils import free_port

SYNTHETIC_ROWS = 20_000
SMALL_RUN: List[str] = [
    "--synthetic-rows", str(SYNTHETIC_ROWS),
    "--batch-size", "512",
    "--epochs", "2",
    "--embedding-dim", "8",
    "--lr", "0.003",
    "--sparse-lr", "0.05",
    "--early-stopping-patience", "0",
    "--device", "cpu",
]  # fmt: skip
SMALL_IARM: List[str] = ["--interest-layers", "32,16", "--num-layers", "1", "--num-heads", "2", "--head-dim", "8"]
"""The small IARM's settings, added to the runs of IARM."""

TESTS_DIR = Path(__file__).resolve().parent


def run_env(**extra: str) -> Dict[str, str]:
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_DEVICE_TRANSPORT="TCP", PYTHONPATH=path, **extra)
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def train_run(
    data_dir: Path,
    out: Path,
    world_size: int = 1,
    extra: Sequence[str] = (),
    env: Optional[Dict[str, str]] = None,
    max_restarts: int = 0,
    timeout: float = 240,
    module: str = "iarm_torchrec.train",
    iarm_flags: bool = True,
) -> Dict[str, Any]:
    """Train (unless ``out`` already finished) and return its ``metrics.json``; the process
    output is kept in ``out.log`` and shown when the run fails. ``module`` is what each rank
    runs with ``python -m`` (a harness from ``tests/`` such as ``failing_train``); ``iarm_flags``
    adds :data:`SMALL_IARM` (leave it out for other models, which refuse IARM's flags)."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    args = ["--data-dir", str(data_dir), "--out", str(out), *SMALL_RUN, *(SMALL_IARM if iarm_flags else []), *extra]
    if world_size == 1 and not max_restarts:
        command = [sys.executable, "-m", module, *args]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run",
            "--nproc-per-node", str(world_size),
            "--max-restarts", str(max_restarts),
            "--master-port", str(free_port()),
            "-m", module, *args,
        ]  # fmt: skip
    log = out.with_name(out.name + ".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        # a session of its own: a hung job is killed whole, launcher and ranks
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env or run_env(), start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AssertionError(f"{' '.join(command)} hung for {timeout:.0f}s:\n{log.read_text()[-6000:]}") from None
    if returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({returncode}):\n{log.read_text()[-6000:]}")
    return json.loads((out / "metrics.json").read_text())


def checkpointed_run(base: Path) -> Path:
    """One finished 1-process run that checkpointed every 10 steps (shared by the checkpoint
    and export tests of a session); returns its run folder."""
    out = base / "runs" / "ws1-checkpointed"
    train_run(base / "train-data", out, extra=["--checkpoint-every", "10"])
    return out
