"""Learning-rate schedule of a run: linear warm-up, then reduce-on-plateau of the monitored metric.

Both learning rates, the dense optimizer's and the embedding tables' (FBGEMM's fused
optimizers read ``param_groups[0]["lr"]`` at every step), are their base value times one
factor::

    factor = plateau_scale * min(1, (step + 1) / warmup_steps)

``plateau_scale`` starts at 1 and is multiplied by ``plateau_factor`` at the end of every
``plateau_patience``-th epoch in a row without a better validation metric; it is saved in the
checkpoints' progress, so a resumed run continues with the same rates.

Example::

    >>> params = [torch.nn.Parameter(torch.zeros(1))]
    >>> opt = torch.optim.SGD(params, lr=0.1)
    >>> schedule = LearningRateSchedule(opt, warmup_steps=4, plateau_factor=0.5, plateau_patience=2)
    >>> schedule.apply(step=1, plateau_scale=1.0); round(opt.param_groups[0]["lr"], 4)
    0.05
    >>> [schedule.next_plateau_scale(1.0, stalled_epochs=n) for n in (0, 1, 2)]
    [1.0, 1.0, 0.5]
"""

from typing import List

import torch


class LearningRateSchedule:
    """Sets every parameter group's learning rate of ``optimizer`` from its base value.

    Args:
        optimizer: the run's (combined) optimizer; its current learning rates are the bases.
        warmup_steps: steps of linear warm-up (0: none).
        plateau_factor: multiplier per plateau (1: no reduction).
        plateau_patience: epochs without improvement that make a plateau.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, plateau_factor: float = 1.0, plateau_patience: int = 1
    ) -> None:
        self.groups = optimizer.param_groups
        self.base: List[float] = [float(group["lr"]) for group in self.groups]
        self.warmup_steps = warmup_steps
        self.plateau_factor = plateau_factor
        self.plateau_patience = plateau_patience

    @property
    def active(self) -> bool:
        """Whether the schedule ever changes a learning rate."""
        return self.warmup_steps > 0 or self.plateau_factor < 1.0

    def factor(self, step: int, plateau_scale: float) -> float:
        """The multiplier of the base learning rates for ``step`` (0-based)."""
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return plateau_scale * warmup

    def apply(self, step: int, plateau_scale: float) -> None:
        """Set the learning rates for ``step``."""
        factor = self.factor(step, plateau_scale)
        for group, base in zip(self.groups, self.base):
            group["lr"] = base * factor

    def next_plateau_scale(self, plateau_scale: float, stalled_epochs: int) -> float:
        """``plateau_scale`` after an epoch that leaves ``stalled_epochs`` epochs in a row
        without improvement."""
        if self.plateau_factor < 1.0 and stalled_epochs and stalled_epochs % self.plateau_patience == 0:
            return plateau_scale * self.plateau_factor
        return plateau_scale
