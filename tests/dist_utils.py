"""Helpers for tests that run several gloo ranks on one CPU machine.

* :func:`run_ranks` spawns ``world_size`` processes, each in a gloo process group on a free
  local port, and fails (with every rank's traceback) if one of them raises or if they all
  take longer than ``timeout_s`` (a hung collective must not hang the test suite).
* :func:`load_global_state` copies an unsharded model's ``state_dict`` into a
  ``DistributedModelParallel``'s, whose table weights are ``ShardedTensor``s.
* :func:`local_shards` lists what of a (possibly sharded) tensor lives on this rank, with
  its offsets in the full tensor, so that the parent process can compare it to a reference.
"""

import os
import socket
import time
from datetime import timedelta
from typing import Any, Callable, List, Mapping, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed._shard.sharded_tensor import ShardedTensor

Shard = Tuple[List[int], torch.Tensor]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_entry(rank: int, fn: Callable[..., None], world_size: int, port: int, args: Tuple[Any, ...]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_DEVICE_TRANSPORT="TCP")
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ.update(LOCAL_WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., None], *args: Any, world_size: int = 2, timeout_s: float = 240.0) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` spawned processes sharing a gloo
    process group. ``fn`` must be a module-level function (it is pickled by name)."""
    context = mp.start_processes(
        _rank_entry,
        args=(fn, world_size, free_port(), args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            raise TimeoutError(f"{world_size} ranks running {fn.__name__} did not finish in {timeout_s:.0f}s")


def load_global_state(sharded: Mapping[str, Any], full: Mapping[str, torch.Tensor]) -> None:
    """Copy every tensor of the unsharded ``full`` state dict into the matching entry of
    ``sharded`` (a ``DistributedModelParallel.state_dict()``): each local shard of a
    ``ShardedTensor`` receives its slice, plain tensors receive the whole value."""
    missing = sorted(set(sharded) ^ set(full))
    if missing:
        raise KeyError(f"state dicts differ in keys: {missing}")
    with torch.no_grad():
        for name, target in sharded.items():
            source = full[name].view(full[name].shape[0], -1)
            for (row, col), shard in local_shards(target):
                shard.copy_(source[row : row + shard.shape[0], col : col + shard.shape[1]])


def local_shards(tensor: torch.Tensor) -> List[Shard]:
    """``[(offsets, tensor)]`` of what this rank holds of ``tensor``: its local shards if it is
    a ``ShardedTensor`` (possibly none), else the whole tensor at offset 0 (2-D view for 1-D)."""
    if isinstance(tensor, ShardedTensor):
        return [(list(s.metadata.shard_offsets), s.tensor) for s in tensor.local_shards()]
    return [([0, 0], tensor if tensor.dim() == 2 else tensor.view(-1, 1))]
