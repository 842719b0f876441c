"""Sharded checkpoints that lose nothing and are never half-written.

A checkpoint is a folder ``RUN/checkpoints/step-SSSSSSSS`` holding

* the model's and the optimizer's state, saved by every rank at once with
  ``torch.distributed.checkpoint`` (each rank writes its own table shards and optimizer
  moments; ``.metadata`` says where everything lives);
* ``rng-<rank>.pt``: each rank's torch random state;
* ``progress.json`` (written last): where training stands, an exact data position
  (epoch, batches of it done, steps in all), the best validation AUC so far and which
  checkpoint holds it, the per-epoch metrics, and a manifest of every file with its size and
  sha256 (:mod:`~iarm_torchrec.integrity`).

Saving writes into ``step-SSSSSSSS.tmp``; after a barrier rank 0 writes ``progress.json``
and renames the folder, so a folder without ``.tmp`` is complete. The newest ones
(:data:`KEEP_LAST`) and the best one are kept, older ones removed. Loading checks the
manifest first (sizes, then checksums): a damaged checkpoint raises :class:`CheckpointError`
naming the file, and :meth:`CheckpointManager.latest` falls back to the newest one that is
intact. A checkpoint that passes the manifest but that ``torch.distributed.checkpoint`` cannot
load (its ``CheckpointException`` derives from ``BaseException``) is damage too.
"""

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

from iarm_torchrec.files import atomic_write_json
from iarm_torchrec.integrity import file_manifest, verify_files
from iarm_torchrec.train.distributed import DistEnv

logger = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"
KEEP_LAST = 2
_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, partial or damaged."""


@dataclass
class Progress:
    """Where training stands, saved with every checkpoint.

    Args:
        epoch: the epoch in progress (or next, when ``batch == 0``).
        batch: batches of ``epoch`` already trained on.
        step: optimizer steps in all.
        best_score: the best monitored validation score so far (AUC, or minus the log loss).
        best_checkpoint: the checkpoint folder name holding the best model.
        epochs_without_improvement: for early stopping.
        loss_sum: the training losses of ``epoch`` so far, summed over steps (each step's
            loss averaged over the ranks).
        history: one dict of metrics per finished epoch.
        plateau_scale: the reduce-on-plateau factor of the learning rates so far.
        stopped_early: early stopping fired; no more epochs follow.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best_score: float = float("-inf")
    best_checkpoint: Optional[str] = None
    epochs_without_improvement: int = 0
    loss_sum: float = 0.0
    history: List[Dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    plateau_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.best_score is None:  # strict JSON keeps the initial -inf as null
            self.best_score = float("-inf")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointManager:
    """Saves and finds the checkpoints of one run folder.

    Args:
        root: the checkpoints folder (``RUN/checkpoints``), on storage all ranks share.
        env: this process's place in the job; without it (one process, e.g. export) the
            manager can list and verify checkpoints and load them without the random state.
    """

    def __init__(self, root: Path, env: Optional[DistEnv] = None) -> None:
        self.root = Path(root)
        self.env = env

    def complete(self) -> List[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name) and (p / PROGRESS_FILE).is_file()]
        return sorted(found, key=lambda p: p.name)

    def save(self, model: nn.Module, optimizer: KeyedOptimizer, progress: Progress) -> Path:
        """Checkpoint everything at ``progress.step`` (collective: every rank calls it)."""
        if self.env is None:
            raise ValueError("saving a checkpoint needs the job's DistEnv")
        final = self.root / checkpoint_name(progress.step)
        tmp = final.with_name(final.name + ".tmp")
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.env.barrier()
        dcp.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint_id=tmp)
        torch.save(_rng_state(), tmp / f"rng-{self.env.rank}.pt")
        self.env.barrier()
        if self.env.is_main:
            manifest = file_manifest(tmp, sorted(p.name for p in tmp.iterdir() if p.is_file()))
            record = {"progress": asdict(progress), "world_size": self.env.world_size, "files": manifest}
            atomic_write_json(tmp / PROGRESS_FILE, record)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._prune(keep=progress.best_checkpoint)
        self.env.barrier()
        return final

    def _prune(self, keep: Optional[str]) -> None:
        done = self.complete()
        for path in done[:-KEEP_LAST]:
            if path.name != keep:
                shutil.rmtree(path, ignore_errors=True)

    def verify(self, path: Path) -> Progress:
        """The progress recorded in checkpoint ``path``, after checking that every file it
        lists is there with its size and checksum; :class:`CheckpointError` naming what is wrong otherwise."""
        path = Path(path)
        record_file = path / PROGRESS_FILE
        if not record_file.is_file():
            raise CheckpointError(f"{path}: not a complete checkpoint (no {PROGRESS_FILE}){self._fallback_hint(path)}")
        try:
            record = json.loads(record_file.read_bytes().decode("utf-8"))
            progress = Progress(**record["progress"])
            files: Dict[str, Any] = record["files"]
            if not isinstance(files, dict):
                raise TypeError("its file list is not a JSON object")
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # UnicodeDecodeError, JSONDecodeError
            raise CheckpointError(f"{record_file}: damaged ({type(error).__name__}: {error}){self._fallback_hint(path)}") from None
        problem = verify_files(path, files)
        if problem is not None:
            raise CheckpointError(f"{problem}{self._fallback_hint(path)}")
        return progress

    def _fallback_hint(self, path: Path) -> str:
        older = [p for p in self.complete() if p.name < path.name]
        return f"; the previous checkpoint {older[-1]} may be used instead" if older else ""

    def latest(self, before: Optional[Path] = None) -> Optional[Path]:
        """The newest intact checkpoint (damaged newer ones are reported and skipped); with
        ``before``, the newest intact one older than that checkpoint."""
        for path in reversed(self.complete()):
            if before is not None and path.name >= Path(before).name:
                continue
            try:
                self.verify(path)
                return path
            except CheckpointError as error:
                logger.warning("skipping a damaged checkpoint: %s", error)
        return None

    def load(self, path: Path, model: nn.Module, optimizer: Optional[KeyedOptimizer] = None) -> Progress:
        """Restore ``model`` (and ``optimizer`` and this rank's random state) from ``path``."""
        progress = self.verify(path)
        state: Dict[str, Any] = {"model": model.state_dict()}
        if optimizer is not None:
            _init_lazy_state(optimizer)
            state["optimizer"] = optimizer.state_dict()
        try:
            dcp.load(state, checkpoint_id=path)
        except (Exception, CheckpointException) as error:  # DCP wraps per-rank failures in a BaseException
            raise CheckpointError(f"{path}: damaged, cannot be loaded ({type(error).__name__}: {_first_line(error)})") from None
        model.load_state_dict(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
            rng_file = path / f"rng-{self.env.rank if self.env else 0}.pt"
            if rng_file.is_file():  # absent when resumed with more ranks than saved
                torch.set_rng_state(torch.load(rng_file, weights_only=True)["torch"])
        return progress


def load_with_fallback(
    manager: CheckpointManager, path: Path, model: nn.Module, optimizer: KeyedOptimizer, fallback: bool
) -> Tuple[Path, Progress]:
    """Load ``path``; when it turns out damaged while loading and ``fallback`` is set (``--resume
    latest``), the previous intact checkpoint instead (reported), until one loads. Collective: a
    failed ``dcp.load`` fails on every rank, so every rank falls back to the same checkpoint."""
    while True:
        try:
            return path, manager.load(path, model, optimizer)
        except CheckpointError as error:
            older = manager.latest(before=path) if fallback else None
            if older is None:
                raise
            logger.warning("skipping a damaged checkpoint: %s; using %s", error, older)
            path = older


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else ""


def _rng_state() -> Dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state()}


def _init_lazy_state(optimizer: KeyedOptimizer) -> None:
    """Create the lazily made state (Adam moments...) of not-yet-stepped dense optimizers, so
    that ``load_state_dict`` has tensors to copy into (fused optimizers have theirs already)."""
    parts = optimizer.optimizers if isinstance(optimizer, CombinedOptimizer) else [("", optimizer)]
    for _, part in parts:
        if isinstance(part, KeyedOptimizerWrapper) and not part.state and part.params:
            part.init_state()
            part.zero_grad(set_to_none=True)
