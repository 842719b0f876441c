"""Stops a run that has gone numerically wrong, with a message that says what to try.

* :func:`check_loss`: a NaN or infinite training loss stops training at once (a diverged model
  only gets worse, and every later checkpoint would be garbage), naming the step and the
  learning rates to lower. The check reads the loss back each step: on a GPU this is one small
  synchronisation per step.
* :func:`finite_or_worst`: a non-finite validation figure never makes an epoch "best".
* :func:`require_best`: a run whose every evaluation was non-finite has no model to test.
"""

import math
from typing import Any

import torch


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def check_loss(loss: torch.Tensor, progress: Any, settings: Any) -> None:
    """Raise :class:`NonFiniteLoss` when ``loss`` (the step just taken, ``progress.step + 1``) is not finite."""
    value = float(loss.detach().float().sum())
    if math.isfinite(value):
        return
    raise NonFiniteLoss(
        f"training stopped: the loss is {value} at step {progress.step + 1} (epoch {progress.epoch}, "
        f"batch {progress.batch + 1}); the model diverged. Try a lower --lr (now {settings.lr:g}) "
        f"and --sparse-lr (now {settings.sparse_lr:g}), or gradient clipping; then start afresh, or "
        "--resume from a checkpoint saved before the divergence"
    )


def finite_or_worst(value: Any) -> float:
    """``value`` as a float, ``-inf`` when it is missing or not finite (for picking the best epoch)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return number if math.isfinite(number) else -math.inf


def require_best(progress: Any) -> None:
    """Refuse to test when no epoch gave a usable (finite) validation AUC."""
    if progress.best_checkpoint is not None:
        return
    if progress.history:
        raise RuntimeError(
            f"no epoch of {len(progress.history)} gave a finite validation AUC, so there is no best model to test: "
            "the model diverged or the validation split has a single class; try a lower --lr / --sparse-lr"
        )
    raise RuntimeError("no epoch finished, so there is no model to test: check --epochs")
