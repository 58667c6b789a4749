"""Device choice and torch.distributed set-up for ``torchrun`` (DDP: gloo on CPU, nccl on GPU).

Nothing home-made: under ``torchrun --nproc_per_node N`` the usual environment variables (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) are set and ``init_process_group`` reads them. Run as a
plain process, everything here degrades to a single rank with no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from mmbench_cli.model.device import resolve_device


@dataclass
class DistContext:
    """Where this process sits: its rank among ``world_size`` processes and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is running."""
        return self.world_size > 1


def init_distributed(device_name: str, process_group: bool = False) -> DistContext:
    """Join the torchrun process group if there is one (``WORLD_SIZE`` > 1, or ``process_group`` and a torchrun of
    one rank: FSDP needs a group even then) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 or (process_group and "MASTER_ADDR" in os.environ):
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (a no-op on one rank) and return it."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (a picklable python object; a no-op on one rank)."""
    if not ctx.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (a no-op on one rank)."""
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if this process joined one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
