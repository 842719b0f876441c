"""DistEnv.gather_all: every rank's 1-D tensor, lengths may differ, concatenated in rank order."""

import pytest
import torch

from dist_utils import run_ranks
from iarm_torchrec.train.distributed import DistEnv

SIZES = ((3, 5), (0, 2), (4, 4), (0, 0))  # per case, rank 0's and rank 1's lengths


def _values(rank: int, size: int) -> torch.Tensor:
    return torch.arange(size, dtype=torch.float32) + 10 * rank


def _gather(rank: int, world_size: int) -> None:
    env = DistEnv.from_environment(device="cpu")
    for sizes in SIZES:
        gathered = env.gather_all(_values(rank, sizes[rank]))
        expected = torch.cat([_values(r, sizes[r]) for r in range(world_size)])
        assert gathered.device.type == "cpu" and torch.equal(gathered, expected), (sizes, gathered)


@pytest.mark.slow
def test_gather_all_concatenates_unequal_lengths_in_rank_order() -> None:
    run_ranks(_gather, world_size=2, timeout_s=120)
