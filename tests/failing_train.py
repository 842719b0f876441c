"""Test harness: ``iarm train`` with one rank dying on purpose (fault injection lives here, not
in the product).

``python -m failing_train FLAGS`` (``tests/`` on ``PYTHONPATH``) trains like
``python -m iarm_torchrec.train FLAGS``, but with ``FAIL_AT_STEP=k`` in the environment rank
``min(1, world_size - 1)`` exits with status 1 right after step ``k``, once per run folder (a
marker file keeps the restarted job from failing again). It uses the trainer's step callbacks.
"""

import logging
import os
import sys

from iarm_torchrec.train.checkpoint import Progress
from iarm_torchrec.train.settings import TrainSettings
from iarm_torchrec.train.trainer import Trainer, setup_logging, train

FAIL_AT_STEP_ENV = "FAIL_AT_STEP"
MARKER = ".fail-injected"

logger = logging.getLogger("iarm_torchrec.tests.failing_train")


def fail_once_at(step: int):
    def callback(trainer: Trainer, progress: Progress) -> None:
        env = trainer.env
        if progress.step != step or env.rank != min(1, env.world_size - 1):
            return
        marker = trainer.run.run_dir / MARKER
        if marker.exists():
            return
        marker.write_text(f"rank {env.rank} failed on purpose after step {step}\n")
        logger.error("%s=%d: rank %d exits on purpose", FAIL_AT_STEP_ENV, step, env.rank)
        logging.shutdown()
        os._exit(1)

    return callback


if __name__ == "__main__":
    setup_logging()
    logger.setLevel(logging.INFO)
    train(TrainSettings.from_args(sys.argv[1:]), [fail_once_at(int(os.environ[FAIL_AT_STEP_ENV]))])
