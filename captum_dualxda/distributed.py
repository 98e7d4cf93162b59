"""``torch.distributed`` helpers: deterministic sharding, in-order gathers, exact top-k merges.

DualDA scales out with PyTorch's own engine. Every helper here is a no-op in a single process
(``torch.distributed`` not initialised), so the same code runs with and without ``torchrun``.
Sharding is strided: rank ``r`` of ``W`` owns indices ``r, r + W, r + 2W, ...``, which loses or
duplicates no sample for any world size, including sizes that do not divide ``n``.
"""
from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "rank_and_world_size",
    "shard_indices",
    "gather_strided",
    "all_reduce_sum",
    "merge_topk",
    "broadcast_object",
    "communication_device",
]


def is_distributed() -> bool:
    """Whether a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> Tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Indices of ``0..n-1`` owned by ``rank``: ``range(rank, n, world_size)``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"`rank` must lie in 0..world_size-1, got rank={rank}, world_size={world_size}.")
    return range(rank, n, world_size)


def communication_device() -> torch.device:
    """Device collectives need: CUDA for NCCL (current device), CPU otherwise."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_strided(local: torch.Tensor, n: int) -> torch.Tensor:
    """Reassemble rows sharded with :func:`shard_indices` into their original order.

    Parameters
    ----------
    local : torch.Tensor
        ``(len(shard_indices(n, rank, W)), ...)`` this rank's rows, in shard order.
    n : int
        Total number of rows.

    Returns
    -------
    torch.Tensor
        ``(n, ...)`` on ``local``'s device, identical on every rank; row ``j`` came from rank
        ``j % W``.
    """
    rank, world = rank_and_world_size()
    if world == 1:
        return local
    per_rank = -(-n // world)
    comm = communication_device()
    padded = torch.zeros((per_rank, *local.shape[1:]), dtype=local.dtype, device=comm)
    padded[: local.shape[0]] = local.to(comm)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype, device=local.device)
    for r, part in enumerate(parts):
        count = len(range(r, n, world))
        out[r::world] = part[:count].to(local.device)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    comm = tensor.to(communication_device()).clone()
    dist.all_reduce(comm, op=dist.ReduceOp.SUM)
    return comm.to(tensor.device)


def merge_topk(values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact global top-``k`` from every rank's local top-``k``.

    Parameters
    ----------
    values, indices : torch.Tensor
        ``(b, k_local)`` this rank's best scores and their global indices (``k_local <= k``;
        ranks may differ).
    k : int
    largest : bool

    Returns
    -------
    values, indices : torch.Tensor
        ``(b, k)``, sorted, identical on every rank.
    """
    if not is_distributed():
        top = torch.topk(values, k, dim=1, largest=largest, sorted=True)
        return top.values, indices.gather(1, top.indices)
    world = dist.get_world_size()
    comm = communication_device()
    b = values.shape[0]
    fill = float("-inf") if largest else float("inf")
    pad_values = torch.full((b, k), fill, dtype=values.dtype, device=comm)
    pad_indices = torch.full((b, k), -1, dtype=torch.long, device=comm)
    pad_values[:, : values.shape[1]] = values.to(comm)
    pad_indices[:, : indices.shape[1]] = indices.to(comm)
    all_values = [torch.empty_like(pad_values) for _ in range(world)]
    all_indices = [torch.empty_like(pad_indices) for _ in range(world)]
    dist.all_gather(all_values, pad_values)
    dist.all_gather(all_indices, pad_indices)
    merged_values = torch.cat(all_values, 1)
    merged_indices = torch.cat(all_indices, 1)
    top = torch.topk(merged_values, k, dim=1, largest=largest, sorted=True)
    return top.values.to(values.device), merged_indices.gather(1, top.indices).to(values.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (identity in one process)."""
    if not is_distributed():
        return obj
    box: List[Any] = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=communication_device())
    return box[0]
