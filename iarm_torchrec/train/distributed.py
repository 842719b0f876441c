"""The process group, the same for one process and for N ranks under torchrun / TorchX.

Under a launcher, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``MASTER_ADDR``/``MASTER_PORT``
come from the environment. Without them the run is world size 1 in a local gloo group on a
free port, so that the one code path (``DistributedModelParallel``, sharded checkpoints,
gathered metrics) runs unchanged on a laptop.

Example::

    >>> env = DistEnv.from_environment(device="cpu")
    >>> env.rank, env.world_size, env.device.type
    (0, 1, 'cpu')
    >>> env.gather_all(torch.tensor([1.0, 2.0])).tolist()
    [1.0, 2.0]
    >>> env.close()
"""

import os
import socket
import warnings
from dataclasses import dataclass
from datetime import timedelta
import torch
import torch.distributed as dist
from torchmetrics.utilities.distributed import gather_all_tensors

_TIMEOUT = timedelta(minutes=30)


@dataclass
class DistEnv:
    """This process's place in the job.

    Args:
        rank / world_size: the global rank and the number of ranks.
        local_rank / local_world_size: the same within this host.
        device: where the model runs (``cuda:<local_rank>`` or ``cpu``).
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: str = "auto") -> "DistEnv":
        """Join (or, alone, create) the default process group: NCCL on CUDA, gloo on CPU."""
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no CUDA device; use --device cpu")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        if use_cuda:
            torch_device = torch.device("cuda", local_rank)
            torch.cuda.set_device(torch_device)
        else:
            torch_device = torch.device("cpu")
        if not dist.is_initialized():
            if "MASTER_ADDR" in os.environ:
                url = "env://"
            elif world_size == 1:
                url = f"tcp://127.0.0.1:{_free_port()}"  # alone: a private local group
            else:
                raise RuntimeError(f"WORLD_SIZE={world_size} but MASTER_ADDR is not set: launch with torchrun")
            store, rank, world_size = next(dist.rendezvous(url, rank=rank, world_size=world_size, timeout=_TIMEOUT))
            # torchrun restarts failed workers against the same agent store, which still holds
            # the dead workers' gloo addresses: a fresh key space per attempt keeps the
            # restarted ranks from connecting to them
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                store=dist.PrefixStore(f"iarm/attempt_{attempt}", store),
                rank=rank,
                world_size=world_size,
                timeout=_TIMEOUT,
            )
        return cls(rank, dist.get_world_size(), local_rank, local_world_size, torch_device)

    def barrier(self) -> None:
        dist.barrier()

    def gather_all(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D ``tensor`` (lengths may differ), concatenated in rank order, on every
        rank (on CPU); torchmetrics' ``gather_all_tensors`` pads, gathers and trims."""
        with warnings.catch_warnings():
            # torchmetrics 1.0.3 trims unequal sizes with x[list of slices], which torch still
            # reads as x[tuple] but warns about on every call
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return torch.cat(gather_all_tensors(tensor.to(self.device))).cpu()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
