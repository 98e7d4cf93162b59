"""``torch.distributed`` helpers: deterministic sharding, in-order gathers, exact top-k merges.

Top-k order: the ``k`` largest (or smallest) values, ties (e.g. the many exact zeros of a sparse
score row) broken towards the lower index, so the result is one well-defined list however the
candidates were split (:func:`stable_topk` within a rank, :func:`merge_topk` over ranks).

DualDA scales out with PyTorch's own engine. Every helper here is a no-op in a single process
(``torch.distributed`` not initialised), so the same code runs with and without ``torchrun``.
Sharding is strided: rank ``r`` of ``W`` owns indices ``r, r + W, r + 2W, ...``, which loses or
duplicates no sample for any world size, including sizes that do not divide ``n``.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist

from .._utils.validation import check_integer

__all__ = [
    "is_distributed",
    "rank_and_world_size",
    "shard_indices",
    "gather_strided",
    "assemble_strided",
    "stable_topk",
    "topk_of_candidates",
    "merge_topk",
    "broadcast_object",
    "write_strided_rows",
    "all_reduce_sum",
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


# Bytes ``dst`` receives per round of :func:`assemble_strided` (all ranks' chunks together).
_ASSEMBLE_ROUND_BYTES = 1 << 26


def write_strided_rows(out: Union[torch.Tensor, np.ndarray], start: int, step: int, rows: torch.Tensor) -> None:
    """Write ``rows`` ``(m, ...)`` to ``out[start], out[start + step], ...``.

    ``out`` is a tensor (rows are moved to its device) or a numpy array / memmap (rows are
    copied to the CPU; numpy casts to its dtype). ``m = 0`` writes nothing.
    """
    m = rows.shape[0]
    if m == 0:
        return
    where = slice(start, start + step * (m - 1) + 1, step)
    if isinstance(out, np.ndarray):
        out[where] = rows.cpu().numpy()
    else:
        out[where] = rows.to(out.device)


def assemble_strided(
    local: Optional[torch.Tensor],
    n: int,
    out: Optional[Union[torch.Tensor, np.ndarray]] = None,
    dst: int = 0,
    chunk_rows: Optional[int] = None,
) -> Optional[Union[torch.Tensor, np.ndarray]]:
    """Assemble rows sharded with :func:`shard_indices` on ONE rank, in original order, streaming.

    Unlike :func:`gather_strided` no rank but ``dst`` ever holds more than its own shard, and
    ``dst`` never holds a second copy: the rows arrive in rounds of at most ``chunk_rows`` rows
    per rank (every rank contributes its next chunk to one ``torch.distributed.gather``; ``dst``
    writes them into place in ``out``). Works with gloo and NCCL (chunks travel on
    :func:`communication_device`). Collective: call it on every rank.

    Parameters
    ----------
    local : torch.Tensor or None
        ``(len(shard_indices(n, rank, W)), *row_shape)`` this rank's rows in shard order (rank
        ``r`` holds global rows ``r, r + W, ...``), on any device, possibly memory-mapped.
        On ``dst`` only, ``None`` means its own rows are already in place in ``out``
        (e.g. written there during extraction); then ``out`` fixes the row shape and dtype.
        Row shape and dtype must be the same on every rank.
    n : int
        Total number of rows over all ranks.
    out : torch.Tensor or numpy.ndarray, optional
        ``(n, *row_shape)`` destination on ``dst`` (a tensor on any device, or a
        ``numpy.memmap``; numpy casts to its dtype). ``None`` on ``dst``: a new tensor on
        ``local``'s device. Ignored on the other ranks.
    dst : int
        The rank that receives everything.
    chunk_rows : int, optional
        Rows each rank sends per round; must be the same on every rank. Default: ``dst``
        receives about 64 MiB per round (``W * chunk_rows`` rows), at least one row.

    Returns
    -------
    torch.Tensor or numpy.ndarray or None
        On ``dst``: ``out`` with row ``j`` taken from rank ``j % W``. ``None`` on the other ranks.
        In one process: ``local`` (or ``out`` filled with it).

    Raises
    ------
    ValueError
        ``local`` does not hold exactly this rank's shard, ``out`` has the wrong shape, ``dst``
        is not a rank, or ``chunk_rows < 1``.
    """
    rank, world = rank_and_world_size()
    dst = check_integer(dst, "dst", low=0, high=world - 1)
    chunk_rows = check_integer(chunk_rows, "chunk_rows", low=1, optional=True)
    expected = len(shard_indices(n, rank, world))
    if local is None:
        if rank != dst or out is None:
            raise ValueError("`local` may be None only on `dst`, with its rows already in `out`.")
        row_shape = tuple(out.shape[1:])
        dtype = out.dtype if isinstance(out, torch.Tensor) else torch.from_numpy(np.empty(0, dtype=out.dtype)).dtype
    else:
        if local.shape[0] != expected:
            raise ValueError(
                f"`local` must hold this rank's {expected} rows (shard_indices(n={n}, rank={rank}, "
                f"world_size={world})), got {local.shape[0]}."
            )
        row_shape, dtype = tuple(local.shape[1:]), local.dtype
    if rank == dst:
        if out is None:
            if world == 1:
                return local
            out = torch.empty((n, *row_shape), dtype=dtype, device=local.device)  # type: ignore[union-attr]
        elif tuple(out.shape) != (n, *row_shape):
            raise ValueError(f"`out` must have shape {(n, *row_shape)}, got {tuple(out.shape)}.")
    if world == 1:
        if local is not None and out is not local:
            write_strided_rows(out, 0, 1, local)  # type: ignore[arg-type]
        return out
    row_bytes = max(1, math.prod(row_shape)) * torch.empty(0, dtype=dtype).element_size()
    if chunk_rows is None:
        chunk_rows = max(1, _ASSEMBLE_ROUND_BYTES // (world * row_bytes))
    comm = communication_device()
    send = torch.zeros((chunk_rows, *row_shape), dtype=dtype, device=comm)
    receive = [torch.empty_like(send) for _ in range(world)] if rank == dst else None
    counts = [len(shard_indices(n, r, world)) for r in range(world)]
    for first in range(0, -(-n // world), chunk_rows):  # same rounds on every rank
        mine = min(chunk_rows, max(0, counts[rank] - first))
        if local is not None and mine:
            send[:mine] = local[first : first + mine].to(comm)
        dist.gather(send, gather_list=receive, dst=dst)
        if receive is None:
            continue
        for r, part in enumerate(receive):
            if r == dst and local is None:
                continue
            count = min(chunk_rows, max(0, counts[r] - first))
            write_strided_rows(out, r + world * first, world, part[:count])  # type: ignore[arg-type]
    if isinstance(out, np.memmap):
        out.flush()
    return out if rank == dst else None


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks (returns a new tensor on ``tensor``'s device)."""
    if not is_distributed():
        return tensor
    comm = tensor.to(communication_device()).clone()
    dist.all_reduce(comm, op=dist.ReduceOp.SUM)
    return comm.to(tensor.device)


def stable_topk(values: torch.Tensor, k: int, largest: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of every row in the top-k order: by value, ties to the lower column.

    The same result as ``torch.sort(values, dim=1, descending=largest, stable=True)`` cut to
    ``k`` columns (NaN counts as the largest value, as there), for the cost of two
    ``torch.topk`` and two elementwise passes (a full sort only when NaN is among the best).

    Parameters
    ----------
    values : torch.Tensor
        ``(b, m)`` floating point; columns in the order that breaks ties (increasing training
        index).
    k : int
        Columns wanted; clipped to ``m``.
    largest : bool
        Largest values first (descending) if True, smallest first (ascending) otherwise.

    Returns
    -------
    values, columns : torch.Tensor
        ``(b, min(k, m))`` the selected values in top-k order and their int64 column positions.
    """
    b, m = values.shape
    k = min(int(k), m)
    if k == 0 or b == 0:
        return values[:, :k], torch.zeros((b, k), dtype=torch.long, device=values.device)
    top = torch.topk(values, k, dim=1, largest=largest, sorted=False)
    if bool(torch.isnan(top.values).any()):
        columns = torch.sort(values, dim=1, descending=largest, stable=True).indices[:, :k]
        return values.gather(1, columns), columns
    # The k-th value of each row: every value strictly better is in `top`; of the values tied with it,
    # the leftmost `need` complete the row (torch.topk picks tied ones in no defined order).
    kth = top.values.amin(1, keepdim=True) if largest else top.values.amax(1, keepdim=True)
    better = top.values > kth if largest else top.values < kth
    need = k - better.sum(1, keepdim=True)
    position = torch.arange(m, dtype=torch.int32 if m < 2**31 - 1 else torch.long, device=values.device)
    tied = torch.where(values == kth, position, m)  # m: not tied
    leftmost = torch.topk(tied, int(need.max()), dim=1, largest=False, sorted=True).values.long()
    keep = torch.cat([better, torch.arange(leftmost.shape[1], device=values.device) < need], 1)
    columns = torch.cat([top.indices, leftmost], 1)[keep].reshape(b, k)  # k kept per row
    columns = torch.sort(columns, dim=1).values
    picked = values.gather(1, columns)
    order = torch.sort(picked, dim=1, descending=largest, stable=True).indices
    return picked.gather(1, order), columns.gather(1, order)


def merge_topk(values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Exact global top-``k`` from every rank's local top-``k``, in the top-k order.

    Each rank passes the top-``k`` of its own candidates (ties to the lower index, as
    :func:`stable_topk` gives them); the candidate sets of the ranks must be disjoint. The
    result is the top-``k`` of their union: by value, ties to the lower global index. In one
    process: ``values`` and ``indices`` put in that order and cut to ``k``.

    Parameters
    ----------
    values, indices : torch.Tensor
        ``(b, k_local)`` this rank's best scores and their int64 global indices (ranks may
        differ, ``k_local = 0`` included; beyond ``k`` only this rank's best ``k`` count).
    k : int
        Wanted; at most the number of candidates over all ranks together.
    largest : bool

    Returns
    -------
    values, indices : torch.Tensor
        ``(b, k)`` (in one process ``(b, min(k, k_local))``), identical on every rank.
    """
    if not is_distributed():
        return topk_of_candidates(values, indices, k, largest)
    world = dist.get_world_size()
    comm = communication_device()
    b = values.shape[0]
    if values.shape[1] > k:  # keep this rank's best k
        values, indices = topk_of_candidates(values, indices, k, largest)
    pad_values = torch.zeros((b, k), dtype=values.dtype, device=comm)
    pad_indices = torch.full((b, k), -1, dtype=torch.long, device=comm)  # -1: no candidate
    pad_values[:, : values.shape[1]] = values.to(comm)
    pad_indices[:, : indices.shape[1]] = indices.to(comm)
    all_values = [torch.empty_like(pad_values) for _ in range(world)]
    all_indices = [torch.empty_like(pad_indices) for _ in range(world)]
    dist.all_gather(all_values, pad_values)
    dist.all_gather(all_indices, pad_indices)
    merged_values = torch.cat(all_values, 1)
    merged_indices = torch.cat(all_indices, 1)
    top_values, top_indices = topk_of_candidates(merged_values, merged_indices, k, largest, empty=merged_indices < 0)
    if bool((top_indices < 0).any()):
        raise ValueError(f"The ranks hold fewer than k={k} candidates together.")
    return top_values.to(values.device), top_indices.to(values.device)


def topk_of_candidates(
    values: torch.Tensor, indices: torch.Tensor, k: int, largest: bool, empty: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top-``k`` of a few candidates per row, given in any order, in the top-k order.

    For short rows (a few times ``k``): three stable sorts of the whole row.

    Parameters
    ----------
    values : torch.Tensor
        ``(b, c)`` the candidates' scores.
    indices : torch.Tensor
        ``(b, c)`` int64 their indices (distinct within a row), which break ties.
    k : int
        Wanted; rows keep ``min(k, c)``.
    largest : bool
    empty : torch.Tensor, optional
        ``(b, c)`` bool slots that hold no candidate; they go last.

    Returns
    -------
    values, indices : torch.Tensor
        ``(b, min(k, c))`` ordered by value (largest first if ``largest``), ties to the lower index.
    """
    order = torch.sort(indices, dim=1, stable=True).indices
    by_value = torch.sort(values.gather(1, order), dim=1, descending=largest, stable=True).indices
    order = order.gather(1, by_value)
    if empty is not None:
        by_slot = torch.sort(empty.gather(1, order).to(torch.uint8), dim=1, stable=True).indices
        order = order.gather(1, by_slot)
    order = order[:, :k]
    return values.gather(1, order), indices.gather(1, order)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (identity in one process)."""
    if not is_distributed():
        return obj
    box: List[Any] = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src, device=communication_device())
    return box[0]
