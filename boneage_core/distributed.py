"""Multi-process training through torch.distributed: the process group torchrun describes, collectives and data shards."""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

logger = logging.getLogger(__name__)

#: How long a rank waits in a collective for the others (rank 0 alone runs the baseline and the evaluation).
DEFAULT_TIMEOUT_MINUTES = 60.0


@dataclass(frozen=True)
class DistContext:
    """This process's place in the training job; the default is a single process (every collective a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None  # the device this rank trains on (None: the caller's choice)

    @property
    def is_main(self) -> bool:
        """Rank 0 decides, validates and writes."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world > 1

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.enabled:
            tdist.barrier(device_ids=[self.local_rank] if self._on_cuda else None)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` (any picklable value) on every rank."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0, device=self.device if self._on_cuda else None)
        return box[0]

    def all_gather_object(self, obj: Any) -> list:
        """Every rank's `obj` (any picklable value), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over all ranks (a new tensor; on the rank's device under NCCL)."""
        out = tensor.detach().clone()
        if self.enabled:
            tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
            out /= self.world
        return out

    def destroy(self) -> None:
        """Leave the process group (no-op for a single process)."""
        if self.enabled and tdist.is_initialized():
            tdist.destroy_process_group()

    @property
    def _on_cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"


#: The single-process context (no process group).
LOCAL = DistContext()


def init_from_env(device: torch.device, timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistContext:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK); a single-process context otherwise.

    NCCL on CUDA (each rank on GPU LOCAL_RANK), gloo on the CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    tdist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    logger.info("Rank %d of %d (local rank %d) on %s, backend %s", rank, world, local_rank, device, backend)
    return DistContext(rank, world, local_rank, device)


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's indices of an n-item split for one epoch: a permutation seeded by (seed, epoch), dealt round-robin.

    Every rank gets ceil(n / world) indices (the same number of steps) and together they cover the split.
    When world divides n the shards are disjoint; otherwise the permutation is padded with its own first
    entries (at most world - 1 repeats), as torch's DistributedSampler does.
    """
    if n < 1 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"need n >= 1 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    per_rank = -(-n // world)
    padded = order.repeat(-(-per_rank * world // n))[:per_rank * world]
    return padded[rank::world]
